"""Hostile tests of `reserved_infer_requests` on a real `ovms`: values config.json may hold, at start and on a
reload (an Infinity used to end ovms with a traceback, and left a reload unanswered for 120 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from ovms.cli import USAGE_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
DIGITS_ROW = [float(value) for value in range(64)]
RELOAD_WAIT_S = 20.0  # a reload that changes nothing answers in well under a second


def write_config(path: Path, models_dir: Path, **extra: Any) -> None:
    """config.json serving digits, with `extra` keys in its entry; json.dumps writes float('inf') as Infinity,
    which Python's json (and so ovms) reads back."""
    entry = {"name": "digits", "base_path": str(models_dir / "digits"), **extra}
    path.write_text(json.dumps({"model_config_list": [{"config": entry}]}))


@pytest.mark.parametrize("reserved", [0, 3])
def test_a_model_with_any_whole_reservation_serves(launch, models_dir: Path, tmp_path: Path, reserved: int) -> None:
    config = tmp_path / "config.json"
    write_config(config, models_dir, reserved_infer_requests=reserved)
    server = launch("--config_path", str(config))
    reply = requests.post(f"{server.rest_url}/v1/models/digits:predict", json={"instances": [DIGITS_ROW]}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert (
        requests.get(f"{server.rest_url}/v1/config", timeout=10).json()["digits"]["model_version_status"][0]["state"]
        == "AVAILABLE"
    )


def test_a_negative_reservation_at_start_is_a_usage_error(models_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    write_config(config, models_dir, reserved_infer_requests=-1)
    finished = run_ovms("--config_path", str(config))
    assert finished.returncode == USAGE_EXIT_CODE
    assert "reserved_infer_requests must be a non-negative integer" in finished.stderr + finished.stdout


def test_an_infinite_reservation_at_start_is_a_usage_error(models_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    write_config(config, models_dir, reserved_infer_requests=float("inf"))
    finished = run_ovms("--config_path", str(config))
    assert finished.returncode == USAGE_EXIT_CODE, finished.stderr[-400:]
    assert "Traceback" not in finished.stderr


def test_reloading_an_infinite_reservation_is_refused_at_once(launch, models_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    write_config(config, models_dir)
    server = launch("--config_path", str(config), "--file_system_poll_wait_seconds", "0")
    write_config(config, models_dir, reserved_infer_requests=float("inf"))
    try:
        reply = requests.post(f"{server.rest_url}/v1/config/reload", timeout=RELOAD_WAIT_S)
    except requests.Timeout:
        pytest.fail(f"no answer to the reload within {RELOAD_WAIT_S} s")
    assert reply.status_code == 400, reply.text
    predict = requests.post(f"{server.rest_url}/v1/models/digits:predict", json={"instances": [DIGITS_ROW]}, timeout=30)
    assert predict.status_code == 200, "the running configuration stays"


def run_ovms(*args: str) -> subprocess.CompletedProcess[str]:
    """`ovms args` in a child process, without a broker in the environment; it must stop on its own."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVMS_")}
    return subprocess.run(
        [sys.executable, "-m", "ovms", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
