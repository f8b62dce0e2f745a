"""A Docker engine and the project's image, for the tests that run containers as users do.

The engine: the one already running, else (as root, with Debian's docker.io installed) a `dockerd` this
test session starts and stops by its pid (these machines have no systemd). Its data stays in
/var/lib/docker, so the image's layers are cached from one run to the next.

The image: `make docker_build_offline` — a locally made Debian base and a wheelhouse, since no image
registry and no PyPI can be reached from a build here — tagged TEST_IMAGE. A rebuild with nothing
changed takes seconds (Docker's layer cache).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGE = os.environ.get("IMAGE", "ovms:test")
ENGINE_START_S = 60.0
BUILD_TIMEOUT_S = 1200.0
LOCAL = "127.0.0.1"  # where tests publish containers' ports: nothing beyond this host reaches them


def engine_running() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def missing_engine_reason() -> str | None:
    """Why no engine can be had here, or None."""
    if shutil.which("docker") is None:
        return "the docker command is missing: apt-get install docker.io"
    if engine_running():
        return None
    if shutil.which("dockerd") is None:
        return "no Docker engine runs and dockerd is missing: apt-get install docker.io"
    if os.geteuid() != 0:
        return "no Docker engine runs, and only root can start dockerd"
    return None


@contextmanager
def docker_engine() -> Iterator[None]:
    """A running engine for the duration; one this started is stopped at the end."""
    reason = missing_engine_reason()
    if reason is not None:
        raise RuntimeError(reason)
    if engine_running():
        yield
        return
    log = Path(tempfile.mkstemp(prefix="dockerd-", suffix=".log")[1])
    with open(log, "w") as output:
        daemon = subprocess.Popen(
            ["dockerd", "--storage-driver", "overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs"],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + ENGINE_START_S
        while not engine_running():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def build_image(tag: str = TEST_IMAGE) -> str:
    """`make docker_build_offline` for `tag`; returns the tag. Fails with the build's last output."""
    result = subprocess.run(
        ["make", "-s", "docker_build_offline", f"OVMS_CPP_DOCKER_IMAGE={tag}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if result.returncode != 0:
        raise RuntimeError(f"image build failed:\n{(result.stdout + result.stderr)[-5000:]}")
    return tag


def docker(*args: str, timeout_s: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a docker command; with `check`, a failure raises with its output."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def wait_for_log(container: str, line: str, timeout_s: float = 180.0) -> str:
    """The container's output once it holds `line`; raises with its tail if it exits or times out first."""
    deadline = time.monotonic() + timeout_s
    while True:
        logs = docker("logs", container, check=False)
        text = logs.stdout + logs.stderr
        if line in text:
            return text
        state = docker("inspect", "-f", "{{.State.Running}}", container, check=False).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            raise RuntimeError(f"container {container} did not log {line!r} (running: {state}):\n{text[-4000:]}")
        time.sleep(0.5)


def health(container: str) -> str:
    """The container's HEALTHCHECK status: starting, healthy or unhealthy."""
    return docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()


def container_log(container: str) -> str:
    """`docker logs`: the container's stdout and stderr, in one text."""
    result = subprocess.run(
        ["docker", "logs", container], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60
    )
    return result.stdout


def unique_name(purpose: str) -> str:
    """A container name no other run uses (test sessions share the engine)."""
    return f"ovms-{purpose}-{uuid.uuid4().hex[:8]}"


@contextmanager
def started_container(command: list[str], name: str, artifacts: Path | None = None) -> Iterator[str]:
    """The id of the container `command` starts (it prints the id last, as `docker run -d` does), removed
    with `docker rm -f` at the end — by `name` too, since a `docker run` that fails (a port taken) may
    leave it created. With `artifacts`, its log is saved there first, as <name>.log."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    words = result.stdout.split()
    if result.returncode != 0 or not words:
        docker("rm", "-f", name, check=False)
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
    container = words[-1]
    try:
        yield container
    finally:
        if artifacts is not None:
            artifacts.mkdir(parents=True, exist_ok=True)
            (artifacts / f"{name}.log").write_text(container_log(container))
        docker("rm", "-f", container, check=False)
