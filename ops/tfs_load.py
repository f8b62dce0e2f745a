#!/usr/bin/env python3
"""TF Serving API load from this process: gRPC Predict from grpc.aio coroutines, REST predict from threads.

Run as a script, it is gRPC load from a process of its own (for ops/priority_bench.py: a flood whose client
work does not share the measured client's event loop), and prints the report ops/v2_load.py prints:

    python ops/tfs_load.py --address HOST:PORT --model resnet --concurrency 16 --start-at EPOCH --duration S \
        [--metadata KEY=VALUE ...]

Each client sends Predict calls back to back from now on; the window opens at `--start-at` (a `time.time()`).
Output: {"seconds": window, "latencies_s": [...], "errors": {kind: count}, "completed": successes in all}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import requests
from bench_cases import CASES, ModelCase
from bench_stats import Recorder, Stats, Window
from proc_cpu import CpuWindow

from api.protos import serving_pb2, serving_pb2_grpc, tensorflow_pb2

REQUEST_TIMEOUT_S = 30.0
ERROR_BACKOFF_S = 0.01


def predict_request(case: ModelCase, sample: np.ndarray | bytes) -> serving_pb2.PredictRequest:
    """A Predict request carrying `sample` as float32 `tensor_content`, or a JPEG as a DT_STRING element."""
    request = serving_pb2.PredictRequest()
    request.model_spec.name = case.name
    tensor = request.inputs[case.input_name]
    if isinstance(sample, bytes):
        tensor.dtype = tensorflow_pb2.DataType.DT_STRING
        tensor.tensor_shape.dim.add(size=1)
        tensor.string_val.append(sample)
        return request
    tensor.dtype = tensorflow_pb2.DataType.DT_FLOAT
    tensor.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=size) for size in sample.shape)
    tensor.tensor_content = sample.astype(np.float32).tobytes()
    return request


def metadata_batch_size(metadata: grpc.aio.Metadata | None) -> int | None:
    value = dict(metadata or ()).get("ovms-batch-size")
    return int(value) if value else None


async def grpc_stream(
    stub: serving_pb2_grpc.PredictionServiceStub,
    case: ModelCase,
    requests_: list[serving_pb2.PredictRequest],
    counter: Iterator[int],
    recorder: Recorder,
    metadata: tuple[tuple[str, str], ...] = (),
    pause_s: float = 0.0,
) -> None:
    """One client: Predict calls back to back (`pause_s` apart) until the window closes, each with `metadata`."""
    while recorder.window.open():
        request = requests_[next(counter) % len(requests_)]
        started = time.perf_counter()
        call = stub.Predict(request, timeout=REQUEST_TIMEOUT_S, metadata=metadata or None)
        try:
            response = await call
            batch_size = metadata_batch_size(await call.trailing_metadata())
        except grpc.aio.AioRpcError as error:
            recorder.failure(time.perf_counter(), error.code().name)
            await asyncio.sleep(ERROR_BACKOFF_S)
            continue
        ended = time.perf_counter()
        if case.output_name in response.outputs:
            recorder.success(started, ended, batch_size)
        else:
            recorder.failure(ended, "missing output")
        if pause_s:
            await asyncio.sleep(pause_s)


async def measure_grpc_async(
    address: str, case: ModelCase, concurrency: int, window: Window, metadata: tuple[tuple[str, str], ...] = ()
) -> Stats:
    requests_ = [predict_request(case, sample) for sample in case.encoded or case.samples]
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        recorder = Recorder(window)
        counter = itertools.count()
        streams = [grpc_stream(stub, case, requests_, counter, recorder, metadata) for _ in range(concurrency)]
        await asyncio.gather(*streams)
    return recorder.stats()


def measure_grpc(
    address: str, case: ModelCase, concurrency: int, window: Window, cpu: CpuWindow | None = None
) -> Stats:
    """`concurrency` coroutines on one grpc.aio channel in this process, each sending batch-1 Predict calls back
    to back."""
    if cpu is not None:
        cpu.add(os.getpid(), "client")
    return asyncio.run(measure_grpc_async(address, case, concurrency, window))


def rest_stream(url: str, bodies: list[bytes], counter: Iterator[int], recorder: Recorder) -> None:
    """One client thread with its own session: predict calls back to back until the window closes."""
    headers = {"Content-Type": "application/json"}
    with requests.Session() as session:
        while recorder.window.open():
            body = bodies[next(counter) % len(bodies)]
            started = time.perf_counter()
            try:
                reply = session.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
            except requests.RequestException as error:
                recorder.failure(time.perf_counter(), type(error).__name__)
                time.sleep(ERROR_BACKOFF_S)
                continue
            ended = time.perf_counter()
            if reply.status_code == 200:
                batch = reply.headers.get("X-Ovms-Batch-Size")
                recorder.success(started, ended, int(batch) if batch else None)
            else:
                recorder.failure(ended, f"HTTP {reply.status_code}")


def measure_rest(base_url: str, case: ModelCase, concurrency: int, window: Window, cpu: CpuWindow) -> Stats:
    """`concurrency` threads in this process posting row-format (`instances`) batch-1 predict requests."""
    cpu.add(os.getpid(), "client")
    url = f"{base_url}/v1/models/{case.name}:predict"
    if case.encoded is not None:
        instances = [[{"b64": base64.b64encode(image).decode()}] for image in case.encoded]
    else:
        instances = [sample.tolist() for sample in case.samples]
    bodies = [json.dumps({"instances": rows}).encode() for rows in instances]
    counter = itertools.count()
    recorder = Recorder(window)
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(rest_stream, url, bodies, counter, recorder) for _ in range(concurrency)]
        for future in futures:
            future.result()
    return recorder.stats()


def _metadata_item(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.lower(), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the server's gRPC HOST:PORT")
    parser.add_argument("--model", choices=sorted(CASES), required=True)
    parser.add_argument("--concurrency", type=int, default=1, help="clients sending back to back")
    parser.add_argument("--start-at", type=float, required=True, help="when the window opens, a time.time()")
    parser.add_argument("--duration", type=float, required=True, help="the window's seconds")
    parser.add_argument("--metadata", type=_metadata_item, action="append", default=[], help="KEY=VALUE, per call")
    args = parser.parse_args(argv)
    start = time.perf_counter() + args.start_at - time.time()
    window = Window(start, start + args.duration)
    stats = asyncio.run(
        measure_grpc_async(args.address, CASES[args.model](), args.concurrency, window, tuple(args.metadata))
    )
    report = {
        "seconds": stats.seconds,
        "latencies_s": (stats.latencies_ms / 1000.0).tolist(),
        "errors": dict(stats.errors),
        "completed": stats.completed,
    }
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
