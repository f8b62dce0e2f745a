"""`make run`, exactly as the README gives it: serves the example models, every command and snippet the README
runs against it works verbatim (tests/support/readme.py), and Ctrl-C stops everything.

One `make run` (ports 9178 and 8000, as the README says) serves the module; its last test stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from ovmsclient import make_grpc_client

from tests.support import readme
from tests.support.stack import GRPC_READY, REPO, REST_READY

# What a user's shell has: none of the variables a `make test` around this suite hands down (with MAKELEVEL
# set, an inner make prints "Entering directory" lines a user never sees).
USER_SHELL = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}


def _descendants(pid: int) -> list[psutil.Process]:
    """Every live process under `pid`: make, ovms and the children it runs in sessions of their own."""
    return [p for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


def _wait_for(log_path: Path, process: subprocess.Popen, lines: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if all(line in text for line in lines):
            return
        assert process.poll() is None, f"make run exited early:\n{text[-3000:]}"
        time.sleep(0.2)
    raise TimeoutError(f"make run never became ready:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[subprocess.Popen]:
    """`make run` in the repository, in a session of its own (so that Ctrl-C can be sent as a terminal does),
    ready on both ports; stopped at the end if no test stopped it."""
    log_path = tmp_path_factory.mktemp("make-run") / "make-run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**USER_SHELL, "PYTHONUNBUFFERED": "1"},
        )
    try:
        _wait_for(log_path, process, [f"{GRPC_READY} 9178 ", f"{REST_READY} 0.0.0.0:8000"], timeout_s=600)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=60)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory laid out as the clone the README speaks from after `make run` and `make test`'s
    client venvs: links to the repository's tracked top-level entries, `.venv*` and `models`. Files the
    blocks write (china.jpg, out.npy, ...) land here, not in the repository."""
    directory = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = {path.split("/", 1)[0] for path in tracked.splitlines()} | {".venv", ".venv-tfs", ".venv-triton", "models"}
    for name in sorted(names):
        (directory / name).symlink_to(REPO / name)
    return directory


def test_make_run_serves_digits_over_rest_and_grpc(make_run: subprocess.Popen, models_dir: Path) -> None:
    images = np.load(models_dir / "data" / "imgs.npy")[:8]
    labels = np.load(models_dir / "data" / "labels.npy")[:8]
    reply = requests.post(
        "http://localhost:8000/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    assert (np.argmax(reply.json()["predictions"], axis=1) == labels).mean() >= 0.75
    outputs = make_grpc_client("localhost:9178").predict({"x": images}, "digits")
    np.testing.assert_allclose(outputs, reply.json()["predictions"], rtol=1e-5, atol=1e-6)
    titles = [" ".join(p.cmdline()) for p in _descendants(make_run.pid)]
    assert any(t.startswith("ovms worker ") for t in titles), titles
    assert any(t.startswith("ovms redis ") for t in titles), titles


def test_the_readmes_run_blocks_run_verbatim_in_order(make_run: subprocess.Popen, clone: Path) -> None:
    """Each block marked `run` in README.md, in document order, in one directory (later blocks use the files
    earlier ones wrote): bash blocks under `bash -euo pipefail` after `source .venv/bin/activate`, with `curl`
    wrapped to add `--fail-with-body -sS` (so that an HTTP error fails the block), python blocks with the
    interpreter their marker names. What a block shows with `# ->` is checked against what it printed."""
    runs = [block for block in readme.blocks() if block.runs]
    assert len(runs) >= 10
    for block in runs:
        readme.check_output(block, readme.run(block, clone))
    assert np.load(clone / "first.npy").shape == np.load(clone / "out.npy").shape == (450, 10)


# The README's inline commands (Quick start) that run against `make run`, verbatim; `make test_throughput`
# (8 clients of 500 requests, ≈ 20 s on 2 cores) is left out to keep this module short.
INLINE = [
    "make test_perf",
    ".venv/bin/python tests/performance/grpc_latency.py --images_numpy_path models/data/imgs.npy "
    "--labels_numpy_path models/data/labels.npy --model_name digits --input_name x --output_name probabilities "
    "--iterations 1000 --batchsize 1 --report_every 100",
]


@pytest.mark.parametrize("command", INLINE, ids=["make-test-perf", "grpc-latency"])
def test_the_readmes_latency_commands_run_verbatim(make_run: subprocess.Popen, clone: Path, command: str) -> None:
    assert f"`{command}`" in " ".join(readme.README.read_text(encoding="utf-8").split())
    done = subprocess.run(
        ["bash", "-c", command], cwd=clone, capture_output=True, text=True, timeout=120, env=USER_SHELL
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Final average latency" in done.stdout.splitlines()[-1], done.stdout[-2000:]


def test_ctrl_c_stops_make_run_and_every_child(make_run: subprocess.Popen) -> None:
    """Last in the module: it stops the server the tests above share. Its children run in sessions of their
    own (a terminal's Ctrl-C reaches only ovms, which stops each of them): every one must be gone."""
    running = _descendants(make_run.pid)
    assert len(running) >= 3, "expected ovms, a worker and Redis under make"
    os.killpg(make_run.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    make_run.wait(timeout=60)
    _, alive = psutil.wait_procs(running, timeout=20)
    assert alive == [], f"make run left processes behind after Ctrl-C: {[p.cmdline() for p in alive]}"
