#!/usr/bin/env python3
"""Measure request priorities (and fair share between tenants) on one saturated model, in one run.

    python ops/priority_bench.py [--model resnet] [--duration 10] [--warmup 3] [--rounds 5] [--low-clients 16] \\
        [--high-clients 1] [--pause 0.02] [--server-flags "..."] [--no-tenants]

The model runs with the THROUGHPUT performance hint unless `--server-flags` says otherwise: two CPU streams, so
two infer requests that run in parallel, one of which the batcher keeps for a level or tenant that is not
flooding (inference.batcher). The flood's clients run in a process of their own (ops/tfs_load.py).

Starts the whole stack (`python -m ovms`: embedded Redis, one worker, the api; ops/bench_stack.py) with a token
file of two tenants, `flood` and `probe` (api.tenants; every client sends one of their tokens), and drives
TF Serving gRPC Predict, batch 1, from grpc.aio coroutines: `--low-clients` back to back at the lowest level
(`ovms-priority: 3`) saturate the model, `--high-clients` send at the highest level (`ovms-priority: 1`), each
pausing `--pause` seconds between its requests (interactive traffic); in these phases every client is of the
tenant `flood`. Phases, each with its own warmup and window,
run in turn `--rounds` times (on a shared machine the load of others changes from minute to minute: each phase
sees the same spread of it); a phase's figures pool its rounds, and its ratio is also given per round:

- unloaded: the high clients alone (their p50 / p99 are the reference);
- loaded: the low flood and the high clients together — the high clients' p99 over the unloaded one is the
  figure the priorities are for (goal: at most 2), and the low clients must still complete requests;
- no priority: the same load with no client sending a priority (every request at the model's default level):
  what the priorities change;
- tenants (unless `--no-tenants`): the `probe` tenant's one client (pausing as the high clients do) alone, then
  beside the `flood` tenant's `--low-clients`, every request at the default level: the probe's p99 over its
  unloaded one (goal: at most 2), and the flood's progress.

The table is printed as Markdown on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from bench_cases import CASES, ModelCase
from bench_report import RunStart, fmt, load_average, machine, markdown_table, progress, ratio
from bench_stack import Server, measuring, stop_on_sigterm
from bench_stats import Recorder, Stats, Window, stats_from_report
from tfs_load import grpc_stream, predict_request

from api.protos import serving_pb2_grpc

TFS_LOAD = Path(__file__).with_name("tfs_load.py")
EXIT_GRACE_S = 30.0  # for the flood's process to finish its last calls and report
THROUGHPUT_HINT = '{"PERFORMANCE_HINT": "THROUGHPUT"}'
HIGH, LOW = "1", "3"
FLOOD_TOKEN, PROBE_TOKEN = "bench-flood-token", "bench-probe-token"
TOKENS = f"{FLOOD_TOKEN} tenant=flood max_priority=1\n{PROBE_TOKEN} tenant=probe\n"  # flood: levels 1 and 3
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Clients:
    """A group of clients sending with the same metadata."""

    count: int
    metadata: Metadata
    pause_s: float = 0.0


@dataclass(frozen=True)
class Phase:
    name: str
    probe: Clients  # whose latency is measured
    flood: Clients | None = None  # the load beside it


async def _drive(address: str, case: ModelCase, clients: Clients, window: Window) -> Stats:
    """The clients on one channel, each back to back (after its pause) until the window closes."""
    requests_ = [predict_request(case, sample) for sample in case.encoded or case.samples]
    recorder = Recorder(window)
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = serving_pb2_grpc.PredictionServiceStub(channel)
        counter = itertools.count()
        streams = [
            grpc_stream(stub, case, requests_, counter, recorder, clients.metadata, clients.pause_s)
            for _ in range(clients.count)
        ]
        await asyncio.gather(*streams)
    return recorder.stats()


@contextmanager
def flood_process(address: str, case: ModelCase, clients: Clients, window: Window) -> Iterator[list[Stats]]:
    """The flood's clients in a process of their own (ops/tfs_load.py), as other users' clients would be: in the
    measured client's event loop, its replies would wait for the flood's. Yields a list that holds the flood's
    stats once the block is left."""
    start, end = window.wall_clock()
    command = [
        sys.executable, str(TFS_LOAD), "--address", address, "--model", case.name,
        "--concurrency", str(clients.count), "--start-at", repr(start), "--duration", repr(end - start),
        *(f"--metadata={key}={value}" for key, value in clients.metadata),
    ]  # fmt: skip
    outcome: list[Stats] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as flood:
        try:
            yield outcome
            stdout, stderr = flood.communicate(timeout=max(window.end - time.perf_counter(), 0) + EXIT_GRACE_S)
        finally:
            if flood.poll() is None:
                flood.kill()
    if flood.returncode:
        raise RuntimeError(f"ops/tfs_load.py failed ({flood.returncode}):\n{stderr[-4000:]}")
    outcome.append(stats_from_report(json.loads(stdout)))


def run_phase(args: argparse.Namespace, server: Server, case: ModelCase, phase: Phase) -> tuple[Stats, Stats | None]:
    """The probe's stats and the flood's (None without one)."""
    progress(f"phase {phase.name}: {args.warmup:g} s warmup, {args.duration:g} s measured")
    window = Window.after_warmup(args.warmup, args.duration)
    if phase.flood is None:
        return asyncio.run(_drive(server.grpc_address, case, phase.probe, window)), None
    with flood_process(server.grpc_address, case, phase.flood, window) as flood:
        probe = asyncio.run(_drive(server.grpc_address, case, phase.probe, window))
    return probe, flood[0]


def measure(args: argparse.Namespace, server: Server, case: ModelCase, phases: list[Phase]) -> list[Outcome]:
    """Each of `phases` `args.rounds` times, in turn."""
    outcomes = [Outcome(phase, [], []) for phase in phases]
    for round_ in range(args.rounds):
        for outcome in outcomes:
            progress(f"round {round_ + 1} of {args.rounds}")
            probe, flood = run_phase(args, server, case, outcome.phase)
            outcome.probes.append(probe)
            if flood is not None:
                outcome.floods.append(flood)
    return outcomes


def bearer(token: str) -> tuple[str, str]:
    return "authorization", f"Bearer {token}"


def priority_phases(args: argparse.Namespace) -> list[Phase]:
    """Every client of one tenant: only the levels differ."""
    high = Clients(args.high_clients, (bearer(FLOOD_TOKEN), ("ovms-priority", HIGH)), args.pause)
    low = Clients(args.low_clients, (bearer(FLOOD_TOKEN), ("ovms-priority", LOW)))
    plain_high = Clients(args.high_clients, (bearer(FLOOD_TOKEN),), args.pause)
    return [
        Phase("unloaded", high),
        Phase("loaded", high, low),
        Phase("no priority", plain_high, Clients(args.low_clients, (bearer(FLOOD_TOKEN),))),
    ]


def tenant_phases(args: argparse.Namespace) -> list[Phase]:
    """Every request at the default level: only the tenants differ."""
    if not args.tenants:
        return []
    probe = Clients(1, (bearer(PROBE_TOKEN),), args.pause)
    flood = Clients(args.low_clients, (bearer(FLOOD_TOKEN),))
    return [Phase("tenant alone", probe), Phase("tenant beside another's flood", probe, flood)]


def pooled(measured: list[Stats]) -> Stats:
    """One phase's rounds as one measurement."""
    return Stats(
        requests=sum(stats.requests for stats in measured),
        seconds=sum(stats.seconds for stats in measured),
        latencies_ms=np.concatenate([stats.latencies_ms for stats in measured]),
        batch_sizes=[size for stats in measured for size in stats.batch_sizes],
        errors=sum((stats.errors for stats in measured), Counter()),
        completed=sum(stats.completed for stats in measured),
    )


@dataclass
class Outcome:
    """A phase's rounds: the probe's and the flood's stats of each."""

    phase: Phase
    probes: list[Stats]
    floods: list[Stats]


def p99_ratio(probe: Stats, reference: Stats) -> float:
    return ratio(probe.percentile(99), reference.percentile(99))


def row(outcome: Outcome, reference: Outcome) -> list[str]:
    probe, unloaded = pooled(outcome.probes), pooled(reference.probes)
    flood = pooled(outcome.floods) if outcome.floods else None
    rounds = zip(outcome.probes, reference.probes, strict=True)
    return [
        outcome.phase.name,
        str(probe.requests),
        fmt(probe.percentile(50)),
        fmt(probe.percentile(99)),
        fmt(p99_ratio(probe, unloaded), 2),
        ", ".join(fmt(p99_ratio(mine, theirs), 2) for mine, theirs in rounds),
        str(probe.error_count),
        fmt(flood.throughput) if flood else "-",
        fmt(flood.percentile(50)) if flood else "-",
        str(flood.error_count) if flood else "-",
    ]


HEADERS = [
    "phase",
    "measured requests",
    "p50 ms",
    "p99 ms",
    "p99 / unloaded p99",
    "by round",
    "failed",
    "flood req/s",
    "flood p50 ms",
    "flood failed",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CASES), default="resnet", help="the model to saturate (resnet)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warmup seconds before each phase (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="times each phase runs, in turn (default 5)")
    parser.add_argument("--low-clients", type=int, default=16, help="flooding clients, back to back (default 16)")
    parser.add_argument("--high-clients", type=int, default=1, help="measured clients (default 1)")
    parser.add_argument("--pause", type=float, default=0.02, help="measured clients' pause between requests, s")
    parser.add_argument(
        "--server-flags",
        default=f"--plugin_config '{THROUGHPUT_HINT}'",
        help="ovms flags (per-model ones go to config.json); default: the THROUGHPUT hint, so that the model has "
        "infer requests that run in parallel (with OpenVINO's default, LATENCY, it has one: --server-flags '')",
    )
    parser.add_argument(
        "--tenants",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure a tenant beside another tenant's flood (default on; --no-tenants leaves it out)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = RunStart.now()
    stop_on_sigterm()
    case = CASES[args.model]()
    phases, tenants = priority_phases(args), tenant_phases(args)
    with tempfile.TemporaryDirectory(prefix="ovms-priority-bench-") as directory:
        tokens = Path(directory) / "tokens"
        tokens.write_text(TOKENS)
        flags = [*shlex.split(args.server_flags), "--auth_token_file", str(tokens)]
        server = Server([case], flags, Path(directory), token=FLOOD_TOKEN)
        progress(f"starting {shlex.join(server.command)}")
        with measuring(server):
            outcomes = [measure(args, server, case, group) for group in (phases, tenants)]
    print(f"# priority_bench {run.at:%Y-%m-%d %H:%M %Z}: {args.model}, {machine()}")
    print(
        f"# {args.low_clients} flooding clients back to back, {args.high_clients} measured client(s) pausing "
        f"{args.pause:g} s; {args.rounds} rounds of {args.duration:g} s per phase after {args.warmup:g} s; load "
        f"average {run.load_average:.1f} before, {load_average():.1f} after"
    )
    print()
    rows = [row(outcome, group[0]) for group in outcomes if group for outcome in group]
    print(markdown_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
