"""KServe v2 load from the official Triton client (ops/v2_load.py in .venv-triton, `make triton-client`), against
any v2 server: ours or a peer's."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from bench_cases import REPO, ModelCase
from bench_stats import Stats, Window, stats_from_report
from proc_cpu import CpuWindow

V2_PYTHON = REPO / ".venv-triton" / "bin" / "python"
V2_LOAD = REPO / "ops" / "v2_load.py"
EXIT_GRACE_S = 120.0


def measure_v2(
    url: str,
    case: ModelCase,
    protocol: str,
    samples: Path,
    concurrency: int,
    window: Window,
    cpu: CpuWindow,
) -> Stats:
    """`concurrency` batch-1 clients over `protocol` ("grpc", "rest-binary", "rest-json") to host:port `url`,
    measured over `window`; the client process's CPU counts as "client"."""
    if not V2_PYTHON.exists():
        raise RuntimeError(f"{V2_PYTHON} is missing: run `make triton-client`")
    start, end = window.wall_clock()
    command = [
        str(V2_PYTHON), str(V2_LOAD), "--protocol", protocol, "--url", url, "--model", case.name,
        "--input", case.input_name, "--output", case.output_name,
        "--datatype", "FP32" if case.encoded is None else "BYTES", "--samples", str(samples),
        "--concurrency", str(concurrency), "--start-at", repr(start), "--duration", repr(end - start),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as client:
        cpu.add(client.pid, "client")
        try:
            stdout, stderr = client.communicate(timeout=window.end - time.perf_counter() + EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            client.kill()
            raise
    if client.returncode:
        raise RuntimeError(f"ops/v2_load.py failed ({client.returncode}):\n{stderr[-4000:]}")
    return stats_from_report(json.loads(stdout))
