#!/usr/bin/env python3
"""Measure request priorities (and fair share between tenants) on one saturated model, in one run.

    python ops/priority_bench.py [--model resnet] [--duration 15] [--warmup 3] [--low-clients 16] \\
        [--high-clients 1] [--pause 0.02] [--server-flags "..."] \\
        [--auth-token-file FILE --flood-token T1 --probe-token T2]

Starts the whole stack (`python -m ovms`: embedded Redis, one worker, the api; ops/bench_stack.py) and drives
TF Serving gRPC Predict, batch 1, from grpc.aio coroutines: `--low-clients` back to back at the lowest level
(`ovms-priority: 3`) saturate the model, `--high-clients` send at the highest level (`ovms-priority: 1`), each
pausing `--pause` seconds between its requests (interactive traffic). Phases, each with its own warmup and window:

- unloaded: the high clients alone (their p50 / p99 are the reference);
- loaded: the low flood and the high clients together — the high clients' p99 over the unloaded one is the
  figure the priorities are for (goal: at most 2), and the low clients must still complete requests;
- no priority: the same load with no client sending a priority (every request at the model's default level):
  what the priorities change;
- tenants (with `--auth-token-file` and two of its tokens naming different tenants): the probe tenant's one
  client alone, then beside the flood tenant's `--low-clients`, every request at the default level: the probe's
  p99 over its unloaded one (goal: at most 2). Without the flags the phase is skipped, and says so.

The table is printed as Markdown on stdout, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from bench_cases import CASES, ModelCase
from bench_report import fmt, load_average, machine, markdown_table, progress, ratio
from bench_stack import Server, raise_keyboard_interrupt
from bench_stats import Recorder, Stats, Window
from tfs_load import grpc_stream, predict_request

from api.protos import serving_pb2_grpc

HIGH, LOW = "1", "3"
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


async def _drive(address: str, case: ModelCase, groups: list[Clients], window: Window) -> list[Stats]:
    """Each group on a channel of its own, every client back to back (after its pause) until the window closes."""
    requests_ = [predict_request(case, sample) for sample in case.encoded or case.samples]
    recorders = [Recorder(window) for _ in groups]
    channels = [grpc.aio.insecure_channel(address) for _ in groups]
    try:
        streams = []
        for group, channel, recorder in zip(groups, channels, recorders, strict=True):
            await channel.channel_ready()
            stub = serving_pb2_grpc.PredictionServiceStub(channel)
            counter = itertools.count()
            streams += [
                grpc_stream(stub, case, requests_, counter, recorder, group.metadata, group.pause_s)
                for _ in range(group.count)
            ]
        await asyncio.gather(*streams)
    finally:
        for channel in channels:
            await channel.close()
    return [recorder.stats() for recorder in recorders]


def run_phase(args: argparse.Namespace, server: Server, case: ModelCase, phase: Phase) -> tuple[Stats, Stats | None]:
    """The probe's stats and the flood's (None without one)."""
    progress(f"phase {phase.name}: {args.warmup:g} s warmup, {args.duration:g} s measured")
    groups = [phase.probe] + ([phase.flood] if phase.flood else [])
    window = Window.after_warmup(args.warmup, args.duration)
    stats = asyncio.run(_drive(server.grpc_address, case, groups, window))
    return stats[0], stats[1] if phase.flood else None


def priority_phases(args: argparse.Namespace) -> list[Phase]:
    high = Clients(args.high_clients, (("ovms-priority", HIGH),), args.pause)
    low = Clients(args.low_clients, (("ovms-priority", LOW),))
    return [
        Phase("unloaded", high),
        Phase("loaded", high, low),
        Phase("no priority", Clients(args.high_clients, (), args.pause), Clients(args.low_clients, ())),
    ]


def tenant_phases(args: argparse.Namespace) -> list[Phase]:
    """The fair-share phases: they need tokens that name tenants (--auth_token_file), else none."""
    if not (args.auth_token_file and args.flood_token and args.probe_token):
        return []
    probe = Clients(1, (("authorization", f"Bearer {args.probe_token}"),), args.pause)
    flood = Clients(args.low_clients, (("authorization", f"Bearer {args.flood_token}"),))
    return [Phase("tenant alone", probe), Phase("tenant beside a flood", probe, flood)]


def row(phase: Phase, probe: Stats, flood: Stats | None, reference: Stats) -> list[str]:
    return [
        phase.name,
        str(probe.requests),
        fmt(probe.percentile(50)),
        fmt(probe.percentile(99)),
        fmt(ratio(probe.percentile(99), reference.percentile(99)), 2),
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
    "failed",
    "flood req/s",
    "flood p50 ms",
    "flood failed",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CASES), default="resnet", help="the model to saturate (resnet)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warmup seconds before each phase (default 3)")
    parser.add_argument("--low-clients", type=int, default=16, help="flooding clients, back to back (default 16)")
    parser.add_argument("--high-clients", type=int, default=1, help="measured clients (default 1)")
    parser.add_argument("--pause", type=float, default=0.02, help="measured clients' pause between requests, s")
    parser.add_argument(
        "--server-flags", default="", help='extra ovms flags, e.g. "--max_batch_size 8" (per-model ones: config.json)'
    )
    parser.add_argument("--auth-token-file", default="", help="tokens naming tenants: enables the tenant phases")
    parser.add_argument("--flood-token", default="", help="the flooding tenant's token")
    parser.add_argument("--probe-token", default="", help="the measured tenant's token")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now().astimezone()
    load_before = load_average()
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # stop the server on SIGTERM as on Ctrl-C
    case = CASES[args.model]()
    flags = shlex.split(args.server_flags)
    if args.auth_token_file:
        flags += ["--auth_token_file", args.auth_token_file]
    phases, tenants = priority_phases(args), tenant_phases(args)
    with tempfile.TemporaryDirectory(prefix="ovms-priority-bench-") as directory:
        server = Server([case], flags, Path(directory))
        try:
            progress(f"starting {shlex.join(server.command)}")
            with server:
                results = [(phase, *run_phase(args, server, case, phase)) for phase in phases + tenants]
        except KeyboardInterrupt:
            progress("interrupted; the server was stopped")
            return 130
        except Exception:
            progress(f"failed; last lines of the server log:\n{server.log_tail()}")
            raise
    print(f"# priority_bench {started:%Y-%m-%d %H:%M %Z}: {args.model}, {machine()}")
    print(
        f"# {args.low_clients} flooding clients back to back, {args.high_clients} measured client(s) pausing "
        f"{args.pause:g} s; {args.duration:g} s per phase after {args.warmup:g} s; load average "
        f"{load_before:.1f} before, {load_average():.1f} after"
    )
    print()
    rows = [row(phase, probe, flood, results[0][1]) for phase, probe, flood in results[: len(phases)]]
    if tenants:
        alone = results[len(phases)][1]
        rows += [row(phase, probe, flood, alone) for phase, probe, flood in results[len(phases) :]]
    print(markdown_table(HEADERS, rows))
    if not tenants:
        print(
            "\ntenants: not measured (give --auth-token-file with --flood-token and --probe-token of two tenants)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
