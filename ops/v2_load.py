#!/usr/bin/env python3
"""KServe v2 load with the official Triton client, for ops/bench.py: runs in .venv-triton (`make triton-client`;
tritonclient pins a protobuf older than the server's), prints one JSON document on stdout.

    .venv-triton/bin/python ops/v2_load.py --protocol grpc|rest-binary|rest-json --url HOST:PORT --model M \\
        --input NAME --output NAME --datatype FP32 --samples FILE.npy --concurrency C --warmup S --duration S \\
        [--start-at EPOCH]

Each of the `concurrency` clients sends batch-1 requests back to back (gRPC: tritonclient.grpc.aio coroutines on
one client; REST: threads with a tritonclient.http client each). `--samples` is an .npy array whose rows are the
requests' inputs, cycled; with `--datatype BYTES` it is an .npz of encoded images (keys in order), each sent as
a one-element BYTES tensor (not over rest-json: the client sends JSON BYTES as UTF-8 text, which images are
not). A request counts when it completes inside the measured window (after the warmup). `--start-at` opens the
window at that `time.time()` instead, so that the caller can read CPU counters at the same moments.

Output: {"seconds": window, "latencies_s": [...], "errors": {kind: count}, "completed": successes in all}
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

REQUEST_TIMEOUT_S = 30.0
ERROR_BACKOFF_S = 0.01


@dataclass
class Window:
    start: float
    end: float
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    completed: int = 0  # successes in and out of the window (Redis traffic is counted over both)

    def open(self) -> bool:
        return time.perf_counter() < self.end

    def record(self, started: float, error: str | None) -> None:
        ended = time.perf_counter()
        self.completed += error is None
        if not self.start <= ended <= self.end:
            return
        if error is None:
            self.latencies_s.append(ended - started)
        else:
            self.errors[error] += 1

    def report(self) -> dict[str, Any]:
        return {
            "seconds": self.end - self.start,
            "latencies_s": self.latencies_s,
            "errors": dict(self.errors),
            "completed": self.completed,
        }


def load_samples(path: str, datatype: str) -> list[np.ndarray]:
    """Batch-1 input arrays: rows of an .npy file, or one-element BYTES arrays of the images in an .npz."""
    if datatype == "BYTES":
        with np.load(path) as images:
            return [np.array([images[key].tobytes()], dtype=np.object_) for key in images.files]
    rows = np.load(path, allow_pickle=False)
    return [np.ascontiguousarray(rows[i : i + 1]) for i in range(len(rows))]


def error_kind(error: Exception) -> str:
    if isinstance(error, InferenceServerException):
        return f"{error.status() or 'error'}: {(error.message() or '')[:80]}"
    return type(error).__name__


async def grpc_load(args: argparse.Namespace, samples: list[np.ndarray], window: Window) -> None:
    counter = itertools.count()
    async with grpcclient_aio.InferenceServerClient(args.url) as client:

        async def stream() -> None:
            while window.open():
                sample = samples[next(counter) % len(samples)]
                request = grpcclient.InferInput(args.input, list(sample.shape), args.datatype)
                request.set_data_from_numpy(sample)
                outputs = [grpcclient.InferRequestedOutput(args.output)]
                started = time.perf_counter()
                try:
                    result = await client.infer(
                        args.model, [request], outputs=outputs, client_timeout=REQUEST_TIMEOUT_S
                    )
                except InferenceServerException as error:
                    window.record(started, error_kind(error))
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
                window.record(started, None if result.as_numpy(args.output) is not None else "missing output")

        await asyncio.gather(*(stream() for _ in range(args.concurrency)))


def rest_stream(args: argparse.Namespace, samples: list[np.ndarray], counter: Iterator[int], window: Window) -> None:
    binary = args.protocol == "rest-binary"
    client = httpclient.InferenceServerClient(args.url, network_timeout=REQUEST_TIMEOUT_S)
    try:
        while window.open():
            sample = samples[next(counter) % len(samples)]
            request = httpclient.InferInput(args.input, list(sample.shape), args.datatype)
            request.set_data_from_numpy(sample, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput(args.output, binary_data=binary)]
            started = time.perf_counter()
            try:
                result = client.infer(args.model, [request], outputs=outputs)
            except Exception as error:  # connection errors surface as gevent/socket exceptions
                window.record(started, error_kind(error))
                time.sleep(ERROR_BACKOFF_S)
                continue
            window.record(started, None if result.as_numpy(args.output) is not None else "missing output")
    finally:
        client.close()


def rest_load(args: argparse.Namespace, samples: list[np.ndarray], window: Window) -> None:
    """A client that fails outside a request (e.g. cannot encode its input) fails the run."""
    counter = itertools.count()
    with ThreadPoolExecutor(args.concurrency) as pool:
        streams = [pool.submit(rest_stream, args, samples, counter, window) for _ in range(args.concurrency)]
        for stream in streams:
            stream.result()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["grpc", "rest-binary", "rest-json"], required=True)
    parser.add_argument("--url", required=True, help="host:port of the gRPC or REST listener")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--datatype", default="FP32")
    parser.add_argument("--samples", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--start-at", type=float, help="wall-clock time the window opens (instead of --warmup)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    samples = load_samples(args.samples, args.datatype)
    warmup = args.warmup if args.start_at is None else args.start_at - time.time()
    start = time.perf_counter() + warmup
    window = Window(start, start + args.duration)
    if args.protocol == "grpc":
        asyncio.run(grpc_load(args, samples, window))
    else:
        rest_load(args, samples, window)
    json.dump(window.report(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
