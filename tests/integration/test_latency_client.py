"""The seed's latency client (tests/performance/grpc_latency.py) against a real server: output format and accuracy.

Latency values depend on the machine, so only their format is checked, never their size.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
LATENCY_CLIENT = REPO / "tests" / "performance" / "grpc_latency.py"

ITERATION_LINE = re.compile(
    r"\[--\] Iteration +(\d+)/ *(\d+); Current latency: \d+\.\d\dms; Average latency: \d+\.\d\dms"
)
FINAL_LINE = re.compile(
    r"\[--\] Iterations: +(\d+); Final average latency: \d+\.\d\dms; Classification accuracy: (\d+(?:\.\d+)?)%"
)


def run_client(server, models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = server.grpc_address.rsplit(":", 1)
    command = [
        sys.executable,
        str(LATENCY_CLIENT),
        "--images_numpy_path", str(models_dir / "data" / "imgs.npy"),
        "--labels_numpy_path", str(models_dir / "data" / "labels.npy"),
        "--grpc_address", host,
        "--grpc_port", port,
        "--model_name", "digits",
        "--input_name", "x",
        "--output_name", "probabilities",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_latency_client_reports_like_the_seed(server, models_dir: Path) -> None:
    run = run_client(server, models_dir, "--iterations", "200", "--batchsize", "1", "--report_every", "100")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()

    assert lines[0] == "[--] Starting iterations"
    # like the seed: a report every 100 iterations except the last, which the final line covers
    reports = [ITERATION_LINE.fullmatch(line) for line in lines[1:-1]]
    assert all(reports), lines
    assert [(int(m[1]), int(m[2])) for m in reports] == [(100, 200)]
    assert lines[1].startswith("[--] Iteration   100/  200; ")
    final = FINAL_LINE.fullmatch(lines[-1])
    assert final, lines[-1]
    assert int(final[1]) == 200
    assert float(final[2]) >= 95.0


def test_latency_client_batches_and_versions(server, models_dir: Path) -> None:
    """Batched requests and an explicit version; with 0 iterations it makes one pass over the data."""
    run = run_client(server, models_dir, "--batchsize", "50", "--model_version", "1")
    assert run.returncode == 0, run.stderr
    final = FINAL_LINE.fullmatch(run.stdout.splitlines()[-1])
    assert final, run.stdout
    assert int(final[1]) == len(np.load(models_dir / "data" / "labels.npy")) // 50
    assert float(final[2]) >= 95.0


def test_latency_client_reports_server_errors(server, models_dir: Path) -> None:
    run = run_client(server, models_dir, "--iterations", "3", "--model_version", "7")
    assert run.returncode == 1
    assert "NOT_FOUND: Model with requested version is not found" in run.stderr
