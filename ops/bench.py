#!/usr/bin/env python3
"""Benchmark the served models against raw OpenVINO on the same machine, in one run.

    python ops/bench.py [--duration 8] [--warmup 2] [--concurrency 1,8,32] [--models digits,resnet] \\
        [--rest] [--no-v2] [--server-flags "--max_batch_size 8"]

Starts the whole stack (`python -m ovms`: embedded Redis, a worker, the api) on free ports with a
temporary config.json, and for each model and concurrency c measures

- raw: OpenVINO in this process while the server is idle — c requests of batch 1 kept in flight with an
  `AsyncInferQueue` (PERFORMANCE_HINT LATENCY for c = 1, THROUGHPUT otherwise);
- served: gRPC Predict from c coroutines on one `grpc.aio` channel, batch 1, back to back
  (and REST from c threads with `--rest`), and KServe v2 gRPC, REST with binary tensors and REST JSON driven
  by the official Triton client (ops/v2_load.py in .venv-triton; `--no-v2` leaves them out);
- the bytes through Redis per request (what its clients wrote to it and read from it, from INFO stats, over
  the whole cell, divided by the requests completed in it);
- CPU ms per request of each process over the measured window (utime + stime from /proc, ops/proc_cpu.py):
  the client (this process, or ops/v2_load.py's), the api (`python -m ovms` and any `ovms api` child),
  the worker(s) and the embedded Redis; server = api + worker + Redis.

`--server-flags` go to ovms as they are, except the per-model ones (`--max_batch_size 8`, `--nireq 2`, ...),
which ovms refuses next to `--config_path`: they become settings of every model in the temporary config.json.

A request counts when it completes inside the measured window (after the warmup); throughput is those
completions over the window. The tables are printed as Markdown on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import openvino as ov
from bench_cases import CASES, ModelCase
from bench_raw import measure_raw
from bench_report import RunStart, fmt, markdown_table, progress, ratio
from bench_stack import Server, measuring, stop_on_sigterm
from bench_stats import Measure, Stats, measure_cell
from bench_v2 import measure_v2
from tfs_load import measure_grpc, measure_rest

V2_APIS = {"v2 gRPC": "grpc", "v2 REST bin": "rest-binary", "v2 REST JSON": "rest-json"}  # row label -> protocol
CPU_ROLES = ("client", "api", "worker", "Redis")


@dataclass
class Row:
    """One table row: a served measurement next to the raw one at the same concurrency."""

    concurrency: int
    api: str
    raw: Stats
    served: Stats


def row_cells(row: Row) -> list[str]:
    raw, served = row.raw, row.served
    return [
        str(row.concurrency),
        row.api,
        fmt(raw.throughput, 0),
        fmt(raw.percentile(50), 2),
        fmt(served.throughput, 0),
        fmt(served.percentile(50), 2),
        fmt(served.percentile(99), 2),
        fmt(ratio(served.throughput, raw.throughput), 3),
        fmt(served.mean_batch, 2),
        fmt(served.redis_kb_per_request, 1),
        *(fmt(served.cpu(role), 2) for role in CPU_ROLES),
        fmt(served.cpu("api", "worker", "Redis"), 2),
        str(served.error_count),
    ]


HEADERS = [
    "concurrency", "api", "raw req/s", "raw p50 ms", "served req/s", "served p50 ms", "served p99 ms",
    "served/raw", "mean batch", "Redis KB/req", "CPU ms/req client", "api", "worker", "Redis", "server", "errors",
]  # fmt: skip


def print_model_table(case: ModelCase, rows: list[Row]) -> None:
    print(f"\n### {case.heading}\n")
    print(markdown_table(HEADERS, [row_cells(row) for row in rows]))
    errors = Counter()
    for row in rows:
        errors.update(row.served.errors)
    if errors:
        print("\nerrors: " + ", ".join(f"{kind}: {count}" for kind, count in errors.most_common()))


def print_header(args: argparse.Namespace, server: Server, run: RunStart) -> None:
    print("## Benchmark: served vs raw OpenVINO\n")
    print(run.header_items())
    print(f"- software: Python {sys.version.split()[0]}, OpenVINO {ov.get_version()}, grpcio {grpc.__version__}")
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(f"- server: `{shlex.join(['python', *server.command[1:]])}`")
    if server.model_settings:
        print(f"- config.json settings of every model (from --server-flags): `{json.dumps(server.model_settings)}`")
    print(
        f"- each cell: {args.warmup:g} s warmup + {args.duration:g} s measured; batch 1 per request; "
        "raw = OpenVINO AsyncInferQueue in the benchmark process (LATENCY hint at c=1, THROUGHPUT above), "
        "served = c concurrent clients (gRPC: grpc.aio coroutines on one channel in the benchmark process; "
        "REST: threads, one requests.Session each; v2: the Triton client in another process, ops/v2_load.py); "
        "Redis KB/req = bytes written to and read from Redis per request; CPU ms/req = utime + stime over the "
        "measured window per request completed in it, of the client process, the api process(es), the worker(s) "
        "and Redis (server = api + worker + Redis)"
    )


def describe(stats: Stats) -> str:
    return (
        f"{stats.throughput:,.0f} req/s, p50 {stats.percentile(50):.2f} ms, p99 {stats.percentile(99):.2f} ms, "
        f"batch {stats.mean_batch:.2f}, server CPU {stats.cpu('api', 'worker', 'Redis'):.2f} ms/req, "
        f"errors {stats.error_count}"
    )


def served_measurements(args: argparse.Namespace, server: Server, case: ModelCase) -> dict[str, Measure]:
    """Row label -> a measurement taking (concurrency, window, cpu), for the APIs asked for."""
    apis: dict[str, Measure] = {"gRPC": functools.partial(measure_grpc, server.grpc_address, case)}
    if args.rest:
        apis["REST"] = functools.partial(measure_rest, server.rest_url, case)
    if args.v2:
        samples = case.samples_file(server.directory)
        # tritonclient sends JSON BYTES as UTF-8 text, which encoded images are not
        for label, protocol in V2_APIS.items():
            if not case.encoded or protocol != "rest-json":
                url = server.grpc_address if protocol == "grpc" else server.rest_url.removeprefix("http://")
                apis[label] = functools.partial(measure_v2, url, case, protocol, samples)
    return apis


def bench_model(args: argparse.Namespace, core: ov.Core, server: Server, case: ModelCase) -> list[Row]:
    """Raw and served measurements of one model at every concurrency, each served one with its Redis traffic
    and the CPU of every process."""
    rows: list[Row] = []
    for concurrency in args.concurrency:
        timing = (args.warmup, args.duration)
        progress(f"{case.heading} c={concurrency}: raw OpenVINO ...")
        raw = measure_raw(core, case, concurrency, *timing)
        progress(f"  raw:  {describe(raw)}")
        for label, measure in served_measurements(args, server, case).items():
            server.check_alive()
            progress(f"{case.heading} c={concurrency}: served {label} ...")
            before = server.redis_traffic()
            served = measure_cell(measure, concurrency, *timing, server.roles())
            served.redis_bytes = server.redis_traffic() - before
            progress(f"  {label}: {describe(served)}")
            rows.append(Row(concurrency, label, raw, served))
        server.check_alive()
    return rows


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers separated by commas, e.g. 1,8,32")
    return values


def model_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(CASES))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(CASES)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warmup seconds before each cell (default 2)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="e.g. 1,8,32 (default)")
    parser.add_argument("--models", type=model_list, default=list(CASES), help=f"default: {','.join(CASES)}")
    parser.add_argument(
        "--server-flags", default="", help='extra ovms flags, e.g. "--max_batch_size 8" (per-model ones: config.json)'
    )
    parser.add_argument("--rest", action="store_true", help="also measure the REST API")
    parser.add_argument(
        "--v2",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure KServe v2 too (gRPC, REST binary, REST JSON; default on, --no-v2 leaves it out)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunStart.now()
    stop_on_sigterm()
    cases = [CASES[name]() for name in args.models]
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="ovms-bench-") as directory:
        server = Server(cases, shlex.split(args.server_flags), Path(directory))
        progress(f"starting {shlex.join(server.command)}")
        with measuring(server):
            progress(f"server ready: gRPC {server.grpc_address}, REST {server.rest_url}")
            results = [(case, bench_model(args, core, server, case)) for case in cases]
        print_header(args, server, run)
        for case, rows in results:
            print_model_table(case, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
