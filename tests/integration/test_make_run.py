"""`make run`, exactly as the README gives it: serves the example models, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import requests
from ovmsclient import make_grpc_client

from tests.support.stack import GRPC_READY, REPO, REST_READY


def _session_members(session_id: int) -> list[int]:
    """Every live process in a session (field 6 of /proc/<pid>/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session_id and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _wait_for(log_path: Path, process: subprocess.Popen, lines: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if all(line in text for line in lines):
            return
        assert process.poll() is None, f"make run exited early:\n{text[-3000:]}"
        time.sleep(0.2)
    raise TimeoutError(f"make run never became ready:\n{log_path.read_text()[-3000:]}")


def test_make_run_serves_digits_and_stops_every_child_on_ctrl_c(tmp_path, models_dir):
    log_path = tmp_path / "make-run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_for(log_path, process, [f"{GRPC_READY} 9178", f"{REST_READY} localhost:8000"], timeout_s=600)
        images = np.load(models_dir / "data" / "imgs.npy")[:8]
        labels = np.load(models_dir / "data" / "labels.npy")[:8]
        reply = requests.post(
            "http://localhost:8000/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        assert (np.argmax(reply.json()["predictions"], axis=1) == labels).mean() >= 0.75
        outputs = make_grpc_client("localhost:9178").predict({"x": images}, "digits")
        np.testing.assert_allclose(outputs, reply.json()["predictions"], rtol=1e-5, atol=1e-6)
        assert len(_session_members(process.pid)) >= 3, "expected make, ovms, a worker and Redis"
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        process.wait(timeout=60)
    deadline = time.monotonic() + 20
    while _session_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_members(process.pid) == [], "make run left processes behind after Ctrl-C"
