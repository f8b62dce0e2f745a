#!/usr/bin/env python3
"""Memory under a burst of large requests: peak and settled RSS of the api, the worker and Redis.

    python ops/memory_burst.py [--clients 4] [--request-mb 256] [--server-flags "..."]

Starts the whole stack (as ops/bench.py does: embedded Redis, a worker, the api) on free ports, sends
`--clients` parallel gRPC Predicts to digits, each as large as `--request-mb` allows (float32
`tensor_content`), samples every process' resident memory every 20 ms meanwhile, and prints as Markdown:
the outcome of each call, and per process the RSS before, at its peak and 5 s after the burst.
Not part of `make test`: it needs several GB of free memory at the default size.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import psutil
from bench_cases import digits_case
from bench_report import markdown_table, progress
from bench_stack import Server, stop_on_sigterm
from soak import process_label
from tfs_load import predict_request

from api.protos import serving_pb2_grpc

SAMPLE_EVERY_S = 0.02
SETTLE_S = 5.0
DIGITS_ROW_BYTES = 64 * 4
MESSAGE_OVERHEAD = 4096  # model spec, tensor shape and field tags of a PredictRequest


def rss_by_label(root_pid: int) -> dict[str, float]:
    """MB resident per process of the stack, by role."""
    rss: dict[str, float] = {}
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            label = process_label(process)
            rss[label] = rss.get(label, 0.0) + process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return rss


class PeakSampler:
    """Samples the stack's RSS in a thread and keeps each process' highest."""

    def __init__(self, root_pid: int) -> None:
        self._root_pid = root_pid
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for label, mb in rss_by_label(self._root_pid).items():
                self.peak[label] = max(self.peak.get(label, 0.0), mb)
            time.sleep(SAMPLE_EVERY_S)


def burst(address: str, clients: int, rows: int, timeout_s: float) -> list[tuple[str, float]]:
    """`clients` parallel Predicts of `rows` digits rows; each call's status code name and duration."""
    request = predict_request(digits_case(), np.zeros((rows, 64), np.float32))
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]

    def call(_: int) -> tuple[str, float]:
        started = time.monotonic()
        with grpc.insecure_channel(address, options=options) as channel:
            try:
                serving_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout_s)
            except grpc.RpcError as error:
                return error.code().name, time.monotonic() - started
        return "OK", time.monotonic() - started

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(call, range(clients)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--request-mb", type=int, default=256, help="--max_request_mb of the server (default 256)")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--server-flags", default="", help="extra ovms flags, as for ops/bench.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    rows = ((args.request_mb << 20) - MESSAGE_OVERHEAD) // DIGITS_ROW_BYTES
    flags = ["--max_request_mb", str(args.request_mb), *shlex.split(args.server_flags)]
    with tempfile.TemporaryDirectory(prefix="ovms-memory-") as directory:
        server = Server([digits_case()], flags, Path(directory))
        with server:
            assert server.process is not None
            before = rss_by_label(server.process.pid)
            progress(f"{args.clients} parallel Predicts of {rows:,} rows ({rows * DIGITS_ROW_BYTES / 2**20:.0f} MiB)")
            with PeakSampler(server.process.pid) as sampler:
                outcomes = burst(server.grpc_address, args.clients, rows, args.timeout_s)
            time.sleep(SETTLE_S)
            after = rss_by_label(server.process.pid)
            server.check_alive()
    codes = Counter(code for code, _ in outcomes)
    print(f"- command flags: {' '.join(flags)}")
    print(f"- {args.clients} parallel gRPC Predicts of {rows * DIGITS_ROW_BYTES / 2**20:.0f} MiB: {dict(codes)}")
    print("- seconds per call: " + ", ".join(f"{code} {took:.1f}" for code, took in sorted(outcomes)) + "\n")
    labels = sorted(set(before) | set(sampler.peak) | set(after))
    table = [[label, f"{before.get(label, 0):.0f}", f"{sampler.peak.get(label, 0):.0f}", f"{after.get(label, 0):.0f}"]
             for label in labels]  # fmt: skip
    print(markdown_table(["process", "RSS before MB", "peak MB", f"{SETTLE_S:.0f} s after MB"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
