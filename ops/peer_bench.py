#!/usr/bin/env python3
"""Benchmark our server against MLServer 1.7.1 serving the same IR files, with the same load generator, in one run.

    python ops/peer_bench.py [--duration 5] [--warmup 1] [--cells digits:1,digits:32,resnet:1,resnet:8] [--no-raw] \\
        [--tfs]

Starts three servers side by side on free ports, each idle while another is measured: ours (`python -m ovms`:
embedded Redis, a worker, the api; ops/bench_stack.py) and MLServer twice (ops/peer_mlserver.py:
`parallel_workers: 0`, our OpenVINO runtime ops/mlserver_openvino/runtime.py), with adaptive batching on
(`max_batch_size` 16, `max_batch_time` 2 ms) and off. Every cell (model, concurrency) drives each server in turn
with the official Triton client over KServe v2 gRPC (ops/v2_load.py in .venv-triton, batch 1 per request),
then raw OpenVINO in this process (ops/bench_raw.py), so drift of the shared machine hits all columns alike;
`--tfs` adds our TF Serving gRPC API (grpc.aio coroutines in this process, ops/tfs_load.py) as two more columns.
Server CPU ms per request comes from /proc over the measured window: ours = api + worker + Redis, MLServer =
its process tree.

Prints one Markdown table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import openvino as ov
from bench_cases import CASES, ModelCase
from bench_raw import measure_raw
from bench_report import RunStart, fmt, markdown_table, progress, ratio
from bench_stack import Server, exit_on_interrupt, stop_on_sigterm
from bench_stats import Measure, Stats, measure_cell
from bench_v2 import V2_PYTHON, measure_v2
from peer_mlserver import MLSERVER, MLServer
from tfs_load import measure_grpc

DEFAULT_CELLS = "digits:1,digits:32,resnet:1,resnet:8"
OURS_SERVER_CPU = ("api", "worker", "Redis")


@dataclass(frozen=True)
class Cell:
    model: str
    concurrency: int


@dataclass
class Result:
    cell: Cell
    ours: Stats
    batching: Stats  # MLServer, adaptive batching on
    no_batching: Stats  # MLServer, adaptive batching off
    raw: Stats | None
    tfs: Stats | None  # ours over the TF Serving gRPC API


def cell_list(text: str) -> list[Cell]:
    cells = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        model, _, concurrency = part.partition(":")
        if model not in ("digits", "resnet") or not concurrency.isdigit() or int(concurrency) < 1:
            raise argparse.ArgumentTypeError(f"expected MODEL:CONCURRENCY with MODEL digits or resnet, got {part!r}")
        cells.append(Cell(model, int(concurrency)))
    if not cells:
        raise argparse.ArgumentTypeError("no cells")
    return cells


def measure_server(args: argparse.Namespace, server: Server | MLServer, measure: Measure, cell: Cell) -> Stats:
    server.check_alive()
    stats = measure_cell(measure, cell.concurrency, args.warmup, args.duration, server.roles())
    server.check_alive()
    return stats


def describe(label: str, stats: Stats, *server_roles: str) -> str:
    return (
        f"  {label}: {stats.throughput:,.1f} req/s, p50 {stats.percentile(50):.2f} ms, "
        f"p99 {stats.percentile(99):.2f} ms, server CPU {stats.cpu(*server_roles):.2f} ms/req, "
        f"errors {stats.error_count}"
    )


def measure_round(
    args: argparse.Namespace,
    servers: dict[str, Server | MLServer],
    core: ov.Core,
    case: ModelCase,
    samples: Path,
    cell: Cell,
) -> Result:
    """One cell once: each server in turn with the same v2 load, then raw OpenVINO."""
    stats: dict[str, Stats] = {}
    for label, server in servers.items():
        progress(f"{cell.model} c={cell.concurrency}: {label} ...")
        measure = functools.partial(measure_v2, server.grpc_address, case, "grpc", samples)
        stats[label] = measure_server(args, server, measure, cell)
        progress(describe(label, stats[label], *(OURS_SERVER_CPU if label == "ours" else ("server",))))
    tfs = None
    if args.tfs:
        ours = servers["ours"]
        progress(f"{cell.model} c={cell.concurrency}: ours over TF Serving gRPC ...")
        tfs = measure_server(args, ours, functools.partial(measure_grpc, ours.grpc_address, case), cell)
        progress(describe("ours TF Serving gRPC", tfs, *OURS_SERVER_CPU))
    raw = None
    if args.raw:
        progress(f"{cell.model} c={cell.concurrency}: raw OpenVINO ...")
        raw = measure_raw(core, case, cell.concurrency, args.warmup, args.duration)
        progress(describe("raw", raw))
    return Result(cell, stats["ours"], stats["MLServer batching"], stats["MLServer no batching"], raw, tfs)


def fastest(runs: list[Stats | None]) -> Stats | None:
    measured = [stats for stats in runs if stats is not None]
    return max(measured, key=lambda stats: stats.throughput) if measured else None


def best_of(rounds: list[Result]) -> Result:
    """Per column, the round with the highest throughput (its latency and CPU with it): on a shared machine,
    the round least disturbed by others."""
    columns = ("ours", "batching", "no_batching", "raw", "tfs")
    best = {column: fastest([getattr(result, column) for result in rounds]) for column in columns}
    return Result(rounds[0].cell, **best)


def run_cells(
    args: argparse.Namespace, ours: Server, batching: MLServer, no_batching: MLServer, directory: Path
) -> list[Result]:
    """Every cell `--rounds` times (the rounds one after another, so that each spreads over the run)."""
    cases = {name: CASES[name]() for name in {cell.model for cell in args.cells}}
    samples = {name: case.samples_file(directory) for name, case in cases.items()}
    servers = {"ours": ours, "MLServer batching": batching, "MLServer no batching": no_batching}
    core = ov.Core()
    rounds: dict[Cell, list[Result]] = {cell: [] for cell in args.cells}
    for number in range(args.rounds):
        progress(f"round {number + 1} of {args.rounds}")
        for cell in args.cells:
            rounds[cell].append(measure_round(args, servers, core, cases[cell.model], samples[cell.model], cell))
    return [best_of(rounds[cell]) for cell in args.cells]


HEADERS = [
    "model", "c",
    "ours req/s", "ours p50 ms", "ours p99 ms",
    "MLS batch req/s", "p50 ms", "p99 ms",
    "MLS no-batch req/s", "p50 ms", "p99 ms",
    "raw req/s",
    "ours/MLS best req/s", "ours/MLS batch p50", "ours/MLS no-batch p50", "ours/raw req/s",
    "server CPU ms/req ours", "MLS batch", "MLS no-batch",
]  # fmt: skip


TFS_HEADERS = ["ours TFS gRPC req/s", "p50 ms"]


def row_cells(result: Result) -> list[str]:
    ours, on, off = result.ours, result.batching, result.no_batching
    raw_throughput = result.raw.throughput if result.raw is not None else float("nan")
    best = max(on.throughput, off.throughput)

    def served(stats: Stats) -> list[str]:
        return [fmt(stats.throughput, 1), fmt(stats.percentile(50), 2), fmt(stats.percentile(99), 2)]

    return [
        result.cell.model,
        str(result.cell.concurrency),
        *served(ours),
        *served(on),
        *served(off),
        fmt(raw_throughput, 1),
        fmt(ratio(ours.throughput, best), 2),
        fmt(ratio(ours.percentile(50), on.percentile(50)), 2),
        fmt(ratio(ours.percentile(50), off.percentile(50)), 2),
        fmt(ratio(ours.throughput, raw_throughput), 2),
        fmt(ours.cpu(*OURS_SERVER_CPU), 2),
        fmt(on.cpu("server"), 2),
        fmt(off.cpu("server"), 2),
        *([fmt(result.tfs.throughput, 1), fmt(result.tfs.percentile(50), 2)] if result.tfs is not None else []),
    ]


def venv_version(python: Path, module: str) -> str:
    """The version of a package installed in another virtualenv."""
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    return run.stdout.strip() or "unknown"


def print_report(args: argparse.Namespace, run: RunStart, results: list[Result]) -> None:
    mlserver_python = MLSERVER.parent / "python"
    print("## Peer benchmark: ours vs MLServer, KServe v2 gRPC\n")
    print(run.header_items())
    print(
        f"- software: Python {sys.version.split()[0]}, OpenVINO {ov.get_version().split('-')[0]}, "
        f"MLServer {venv_version(mlserver_python, 'mlserver')} "
        f"(OpenVINO {venv_version(mlserver_python, 'openvino')} in its venv), "
        f"tritonclient {venv_version(V2_PYTHON, 'tritonclient')}"
    )
    print(f"- command: `{shlex.join(sys.orig_argv)}`")
    print(
        f"- each cell: {args.warmup:g} s warmup + {args.duration:g} s measured"
        + (f", best of {args.rounds} rounds per column (the rounds one after another)" if args.rounds > 1 else "")
        + ", batch 1 per request, the servers "
        "measured in turn: ours (`python -m ovms`, defaults: one worker, embedded Redis), MLServer "
        "(`parallel_workers: 0`, metrics off, our OpenVINO runtime) with adaptive batching on (MLS batch: "
        "`max_batch_size` 16, `max_batch_time` 2 ms) and off (MLS no-batch); load: ops/v2_load.py "
        "(tritonclient grpc.aio, c coroutines on one client, another process); raw = OpenVINO AsyncInferQueue "
        "in the benchmark process; server CPU = utime + stime per request over the window (ours: api + worker + "
        "Redis; MLServer: its process tree)"
    )
    print()
    headers = HEADERS + (TFS_HEADERS if args.tfs else [])
    print(markdown_table(headers, [row_cells(result) for result in results]))
    errors = {
        name: stats.error_count
        for result in results
        for name, stats in (("ours", result.ours), ("MLS batch", result.batching), ("MLS no-batch", result.no_batching))
        if stats.error_count
    }
    if errors:
        print(f"\nerrors: {errors}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warmup seconds before each cell (default 1)")
    parser.add_argument("--cells", type=cell_list, default=cell_list(DEFAULT_CELLS), help=f"default {DEFAULT_CELLS}")
    parser.add_argument(
        "--raw", action=argparse.BooleanOptionalAction, default=True, help="measure raw OpenVINO too (default on)"
    )
    parser.add_argument("--tfs", action="store_true", help="also measure ours over the TF Serving gRPC API")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every cell this many times and keep each column's fastest"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunStart.now()
    stop_on_sigterm()
    cases = [CASES[name]() for name in sorted({cell.model for cell in args.cells})]
    with tempfile.TemporaryDirectory(prefix="ovms-peer-bench-") as name, contextlib.ExitStack() as servers:
        directory = Path(name)
        with exit_on_interrupt("the servers were stopped"):
            progress("starting ours, MLServer with adaptive batching, MLServer without")
            ours = servers.enter_context(Server(cases, [], directory))
            batching = servers.enter_context(MLServer(cases, True, directory))
            no_batching = servers.enter_context(MLServer(cases, False, directory))
            progress(f"ready: ours {ours.grpc_address}, MLServer {batching.grpc_address}, {no_batching.grpc_address}")
            results = run_cells(args, ours, batching, no_batching, directory)
        servers.close()
        print_report(args, run, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
