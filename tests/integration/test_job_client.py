"""The `ovms submit | jobs | result | cancel` client as a user meets it: run as a subprocess against a real
api and worker, its mistakes answered in one line each, never a traceback."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.broker import free_port
from tests.support.stack import REPO, OvmsProcess, ovms_command, private_redis, worker_and_api

own_redis_url = pytest.fixture(scope="module", name="own_redis_url")(private_redis)  # its worker is frozen at times


@pytest.fixture(scope="module")
def stack(small_config: Path, own_redis_url: str) -> Iterator[tuple[OvmsProcess, OvmsProcess]]:
    """An api and one worker (which a test may freeze with SIGSTOP: it resumes it before it ends)."""
    args = ["--config_path", str(small_config), "--broker_url", own_redis_url]
    with worker_and_api(args) as (worker, api):
        yield api, worker


def _ovms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(ovms_command(*args), capture_output=True, text=True, cwd=REPO, timeout=120)


def _one_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (asserting there is one line and no traceback)."""
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["submit", "--model", "versioned", "--input", "/nonexistent.npy"],
            "ovms submit: cannot read --input /nonexistent.npy: No such file or directory: give a .npy or .npz file",
        ),
        (
            ["jobs", "--url", "localhost:8301"],
            "ovms jobs: --url localhost:8301 has no scheme: use http://localhost:8301 (or https://",
        ),
        (["jobs", "--url", "ftp://localhost:8301"], "ovms jobs: --url ftp://localhost:8301: use http:// or https://"),
        (["submit", "--model", "versioned"], "ovms submit: the following arguments are required: --input"),
        (["jobs", "--key", "client.key"], "ovms jobs: --key needs --cert"),
        (["jobs", "--cacert", "/nonexistent.pem"], "ovms jobs: --cacert /nonexistent.pem: no such file"),
    ],
)
def test_a_mistake_on_the_command_line_is_one_line_saying_what_to_do(args, expected):
    assert _one_line(_ovms(*args)).startswith(expected)


def test_a_server_that_does_not_answer_is_one_line():
    url = f"http://localhost:{free_port()}"  # nothing listens there
    line = _one_line(_ovms("jobs", "--url", url))
    assert line.startswith(f"ovms jobs: no answer from {url}: ConnectionError"), line


def test_an_unknown_job_and_an_unwritable_output_are_one_line(stack, tmp_path):
    api, _ = stack
    line = _one_line(_ovms("result", "0" * 32, "--url", api.rest_url))
    assert line.startswith(f"ovms result: 404 Job {'0' * 32} is not found") and "`ovms jobs` lists" in line, line
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    submit = ["submit", "--url", api.rest_url, "--model", "versioned", "--input", str(tmp_path / "x.npy")]
    line = _one_line(_ovms(*submit, "--output", str(tmp_path / "no" / "out.npy")))
    assert line.startswith(f"ovms submit: cannot write --output {tmp_path / 'no' / 'out.npy'}: {tmp_path / 'no'} is no")


def test_output_waits_and_the_progress_bar_names_the_job_as_result_takes_it(stack, tmp_path):
    """`--output` without `--wait` waits (it used to exit 0 having written nothing); the progress bar shows
    the full job id, which `ovms result` and `ovms jobs` use; `ovms jobs` has a header row."""
    api, _ = stack
    np.save(tmp_path / "x.npy", np.arange(600 * 4, dtype=np.float32).reshape(600, 4))
    done = _ovms(
        "submit", "--url", api.rest_url, "--model", "versioned", "--version", "2",
        "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "out.npy"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[0]
    assert len(job_id) == 32 and f"{job_id}: 100%" in done.stderr, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "x.npy") * 2)
    fetched = _ovms("result", job_id, "--url", api.rest_url, "--output", str(tmp_path / "again.npy"))
    assert fetched.returncode == 0, fetched.stderr
    listing = _ovms("jobs", "--url", api.rest_url).stdout.splitlines()
    assert listing[0].split() == ["ID", "CREATED", "MODEL", "STATE", "DONE/TOTAL", "FAILED"], listing
    row = next(line for line in listing if line.startswith(job_id))
    assert row.split()[3:] == ["versioned", "v2", "SUCCESS", "600/600", "0"], row
    assert listing[0].index("STATE") == row.index("SUCCESS"), "the header is aligned with the columns"


def test_a_reader_that_closes_the_pipe_ends_result_quietly(stack, tmp_path):
    """`ovms result ID | head -c 100`: exit 141 (128 + SIGPIPE, as `cat` would give), nothing on stderr."""
    api, _ = stack
    np.save(tmp_path / "x.npy", np.ones((5_000, 4), np.float32))  # its JSON result is far beyond a pipe's 64 KiB
    job_id = _ovms(
        "submit", "--url", api.rest_url, "--model", "versioned", "--input", str(tmp_path / "x.npy"), "--wait"
    ).stdout.split()[0]
    result = ovms_command("result", job_id, "--url", api.rest_url)
    piped = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -c 100', "-", *result],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert piped.stdout.startswith('{"outputs": {"y": [[2.0, 2.0')
    assert piped.returncode == 141 and piped.stderr == "", piped.stderr


def test_cancel_revokes_a_job_not_run_yet(stack, tmp_path):
    api, worker = stack
    np.save(tmp_path / "x.npy", np.ones((10, 4), np.float32))
    worker.signal(signal.SIGSTOP)  # the job cannot start
    try:
        submitted = _ovms("submit", "--url", api.rest_url, "--model", "versioned", "--input", str(tmp_path / "x.npy"))
        job_id = submitted.stdout.split()[0]
        cancelled = _ovms("cancel", job_id, "--url", api.rest_url)
    finally:
        worker.signal(signal.SIGCONT)
    assert cancelled.returncode == 0 and cancelled.stdout.split() == [job_id, "REVOKED", "0/10"], cancelled
    assert f"{job_id}" in _ovms("jobs", "--url", api.rest_url).stdout
    line = _one_line(_ovms("result", job_id, "--url", api.rest_url))
    assert line.startswith(f"ovms result: 409 Job {job_id} is REVOKED"), line
    assert _one_line(_ovms("cancel", "f" * 32, "--url", api.rest_url)).startswith("ovms cancel: 404 Job ffff")
