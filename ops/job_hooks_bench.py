"""What job callbacks cost and how soon they come (not in CI): `python -m ovms` serving `versioned` with
`--callback_allow 127.0.0.1/32`, a receiver on 127.0.0.1 (tests.support.receiver), one-sample jobs.

1. N jobs submitted one after another: how long after its job ended each callback arrived.
2. M jobs with callbacks queued behind large jobs: the api's CPU while its callback thread looks whether
   they ended (an EXISTS of each one's chunk results a second), against a window with none waiting.
3. How long after the large jobs ended all M callbacks had arrived (4 delivery threads per api).

    PYTHONPATH=. .venv/bin/python ops/job_hooks_bench.py [--jobs 200] [--waiting 1000]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from bench_cases import ModelCase
from bench_report import progress
from bench_stack import Server, stop_on_sigterm
from proc_cpu import cpu_seconds

from tests.support.receiver import Receiver

WINDOW_S = 10.0
LARGE_JOB_ROWS = 6_000_000  # versioned: 96 MB of tensors, 23,438 chunks, about half a minute of work
LARGE_JOBS = 3  # ahead of the jobs with callbacks: they wait beyond both measured windows


def submit(server: Server, callback: str) -> str:
    body = {"model": "versioned", "instances": [[1.0, 2.0, 3.0, 4.0]], "callback_url": callback}
    reply = requests.post(f"{server.rest_url}/v1/jobs", json=body, timeout=30)
    reply.raise_for_status()
    return reply.json()["id"]


def submit_large(server: Server) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.ones((LARGE_JOB_ROWS, 4), np.float32))
    reply = requests.post(
        f"{server.rest_url}/v1/jobs?model=versioned",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=300,
    )
    reply.raise_for_status()
    return reply.json()["id"]


def state(server: Server, job_id: str) -> dict:
    return requests.get(f"{server.rest_url}/v1/jobs/{job_id}", timeout=30).json()


def wait_for_all(receiver: Receiver, count: int, timeout_s: float = 900) -> None:
    started = time.monotonic()
    while len(receiver.received) < count:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{len(receiver.received)} of {count} callbacks within {timeout_s} s")
        time.sleep(0.05)


def cpu_over_window(server: Server) -> float:
    """The api's CPU seconds per second over WINDOW_S."""
    apis = [pid for pid, role in server.roles().items() if role == "api"]
    before = sum(cpu_seconds(pid) or 0.0 for pid in apis)
    time.sleep(WINDOW_S)
    return (sum(cpu_seconds(pid) or 0.0 for pid in apis) - before) / WINDOW_S


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs of phase 1")
    parser.add_argument("--waiting", type=int, default=1000, help="jobs waiting with callbacks in phases 2-3")
    args = parser.parse_args()
    stop_on_sigterm()
    case = ModelCase("versioned", "x", "y", [])
    with tempfile.TemporaryDirectory(prefix="job-hooks-bench-") as directory, Receiver() as receiver:
        secret = Path(directory) / "secret"
        secret.write_text("bench-secret\n")
        flags = ["--callback_allow", "127.0.0.1/32", "--callback_secret_file", str(secret)]
        with Server([case], flags, Path(directory)) as server:
            progress(f"phase 1: {args.jobs} jobs one after another")
            for _ in range(args.jobs):
                submit(server, receiver.url)
            wait_for_all(receiver, args.jobs)
            late = np.array([arrival.wall - arrival.document()["finished_at"] for arrival in receiver.received])
            print(f"callback after its job's end, {args.jobs} jobs: p50 {np.percentile(late, 50):.2f} s, "
                  f"p95 {np.percentile(late, 95):.2f} s, max {late.max():.2f} s")  # fmt: skip

            receiver.received.clear()
            large = [submit_large(server) for _ in range(LARGE_JOBS)]
            progress(f"phase 2: {LARGE_JOBS} jobs of {LARGE_JOB_ROWS:,} rows, then {args.waiting} with callbacks")
            alone = cpu_over_window(server)
            for _ in range(args.waiting):
                submit(server, receiver.url)
            watching = cpu_over_window(server)
            if state(server, large[-1])["state"] != "PENDING" or receiver.received:
                progress("the jobs with callbacks started within the measured window: the figures do not compare")
            print(f"api CPU beside the large jobs: {alone:.3f} s/s alone, {watching:.3f} s/s with {args.waiting} "
                  f"jobs waiting with callbacks (+{watching - alone:.3f})")  # fmt: skip
            while (ended := state(server, large[-1]))["state"] in ("PENDING", "STARTED"):
                time.sleep(0.2)
            wait_for_all(receiver, args.waiting)
            last = max(arrival.wall for arrival in receiver.received)
            print(f"{args.waiting} callbacks all delivered {last - ended['finished']:.1f} s after the jobs ahead ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
