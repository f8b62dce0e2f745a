#!/usr/bin/env python3
"""Soak: hold the served digits model at a fraction of its measured capacity for a long time.

    python ops/soak.py [--minutes 10] [--load 0.7] [--server-flags "..."]

Starts the whole stack (as ops/bench.py does: embedded Redis, a worker, the api) on free ports, measures
its capacity (32 gRPC clients back to back for 10 s), then sends batch-1 Predicts open-loop at
`--load` x that rate for `--minutes`. Prints, as Markdown on stdout: requests and errors by status
code, latency percentiles, and the memory of every process of the stack (and Redis' own figures) at
the start and at the end of the soak. Progress goes to stderr once a minute. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import redis
from bench_cases import digits_case
from bench_report import markdown_table, progress
from bench_stack import Server, measuring, stop_on_sigterm
from bench_stats import Window
from tfs_load import REQUEST_TIMEOUT_S, measure_grpc, predict_request

from api.protos import serving_pb2_grpc

CAPACITY_CLIENTS = 32
CAPACITY_SECONDS = 10.0
MAX_OUTSTANDING = 512  # beyond this the server is not keeping up: count the send as dropped
EMBEDDED_REDIS_LINE = re.compile(r"Embedded Redis started on ([\d.]+):(\d+)")


@dataclass(frozen=True)
class Snapshot:
    """Resident memory and threads per process of the stack, and Redis' own accounting."""

    rss_mb: dict[str, float]
    threads: dict[str, int]
    redis_used_mb: float
    redis_keys: int


def process_label(process: psutil.Process) -> str:
    command = " ".join(process.cmdline()).split()  # a child titled `ovms worker CPU` (ovms.titled) fills argv[0]
    if "redis-server" in command[0] or command[:2] == ["ovms", "redis"]:
        return "redis-server"
    if command[:2] == ["ovms", "worker"]:
        return f"worker ({command[2]})"
    if "worker" in command:
        return f"worker (--device {command[command.index('--device') + 1]})" if "--device" in command else "worker"
    if "flower" in command:
        return "flower"
    return "api + supervisor"


def snapshot(server: Server, store: redis.Redis) -> Snapshot:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    rss: dict[str, float] = {}
    threads: dict[str, int] = {}
    for process in [root, *root.children(recursive=True)]:
        label = process_label(process)
        rss[label] = rss.get(label, 0.0) + process.memory_info().rss / 2**20
        threads[label] = threads.get(label, 0) + process.num_threads()
    memory = store.info("memory")
    return Snapshot(rss, threads, memory["used_memory"] / 2**20, int(store.dbsize()))


@dataclass
class Tally:
    codes: Counter
    latencies_s: list[float]
    dropped: int = 0


async def open_loop(address: str, rate: float, seconds: float, report_every_s: float = 60.0) -> Tally:
    """Send one Predict every 1/rate seconds regardless of replies; count every outcome."""
    case = digits_case()
    requests_ = [predict_request(case, sample) for sample in case.samples]
    tally = Tally(Counter(), [])
    outstanding: set[asyncio.Task] = set()

    async def one(request: object) -> None:
        started = time.perf_counter()
        try:
            await stub.Predict(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            tally.codes[error.code().name] += 1
            return
        tally.codes["OK"] += 1
        tally.latencies_s.append(time.perf_counter() - started)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        began = time.perf_counter()
        next_report = began + report_every_s
        sent = 0
        while (now := time.perf_counter()) < began + seconds:
            due = int((now - began) * rate) + 1
            while sent < due:
                if len(outstanding) >= MAX_OUTSTANDING:
                    tally.dropped += 1
                else:
                    task = asyncio.create_task(one(requests_[sent % len(requests_)]))
                    outstanding.add(task)
                    task.add_done_callback(outstanding.discard)
                sent += 1
            if now >= next_report:
                progress(f"{(now - began) / 60:.0f} min: {dict(tally.codes)}, dropped {tally.dropped}")
                next_report += report_every_s
            await asyncio.sleep(0.5 / rate)
        await asyncio.gather(*outstanding)
    return tally


def memory_table(start: Snapshot, end: Snapshot) -> str:
    rows = [
        [
            label,
            f"{start.rss_mb.get(label, 0):.0f}",
            f"{end.rss_mb.get(label, 0):.0f}",
            str(start.threads.get(label, 0)),
            str(end.threads.get(label, 0)),
        ]
        for label in sorted(set(start.rss_mb) | set(end.rss_mb))
    ]
    rows.append(["Redis used_memory", f"{start.redis_used_mb:.1f}", f"{end.redis_used_mb:.1f}", "", ""])
    rows.append(["Redis keys", str(start.redis_keys), str(end.redis_keys), "", ""])
    headers = ["process", "RSS at start (MB)", "RSS at end (MB)", "threads at start", "threads at end"]
    return markdown_table(headers, rows)


def report(
    args: argparse.Namespace, capacity: float, rate: float, tally: Tally, memory: tuple[Snapshot, Snapshot]
) -> None:
    total = sum(tally.codes.values())
    errors = {code: count for code, count in tally.codes.items() if code != "OK"}
    latencies = np.array(tally.latencies_s) * 1000
    p50, p99, worst = (np.percentile(latencies, q) if len(latencies) else float("nan") for q in (50, 99, 100))
    print(f"Soak of `digits` over gRPC, {args.minutes:g} min at {args.load:.0%} of capacity")
    print(f"({datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, command: python ops/soak.py "
          f"{shlex.join(sys.argv[1:])})\n")  # fmt: skip
    print(f"- capacity (32 clients back to back): {capacity:,.0f} req/s; target {rate:,.0f} req/s")
    print(f"- requests: {total:,} ({total / (args.minutes * 60):,.0f} req/s), errors: {sum(errors.values()):,} "
          f"{errors}, dropped by the client: {tally.dropped:,}")  # fmt: skip
    print(f"- latency ms: p50 {p50:.2f}, p99 {p99:.2f}, max {worst:.1f}\n")
    print(memory_table(*memory))


def redis_client(server: Server) -> redis.Redis:
    found = EMBEDDED_REDIS_LINE.search(server.log_tail(10**7))
    if found is None:
        raise RuntimeError("the soak needs the embedded Redis; its start line is not in the server log")
    return redis.Redis(host=found[1], port=int(found[2]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the measured capacity (default 0.7)")
    parser.add_argument("--server-flags", default="", help="extra ovms flags, as for ops/bench.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    with (
        tempfile.TemporaryDirectory(prefix="ovms-soak-") as directory,
        measuring(Server([digits_case()], shlex.split(args.server_flags), Path(directory))) as server,
    ):
        store = redis_client(server)
        progress("measuring capacity")
        capacity = measure_grpc(
            server.grpc_address, digits_case(), CAPACITY_CLIENTS, Window.after_warmup(2.0, CAPACITY_SECONDS)
        )
        rate = args.load * capacity.throughput
        start = snapshot(server, store)
        progress(f"capacity {capacity.throughput:,.0f} req/s; soaking at {rate:,.0f} req/s")
        tally = asyncio.run(open_loop(server.grpc_address, rate, args.minutes * 60))
        time.sleep(2.0)  # let expiring keys expire before the last snapshot
        end = snapshot(server, store)
        server.check_alive()
    report(args, capacity.throughput, rate, tally, (start, end))
    return 0


if __name__ == "__main__":
    sys.exit(main())
