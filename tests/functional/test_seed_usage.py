"""The seed's own `docker run` usage of the image, as tests: the model folder mounted at /opt/ml and served on
9178 by one container holding every role (embedded broker, worker, api), healthy by the image's HEALTHCHECK;
`--config_path` with `--log_path` logging to the file and to `docker logs`; `docker stop` a clean exit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ovmsclient
import pytest

from tasks.broker import free_port
from tests.functional.settings import FunctionalSettings
from tests.support.docker import LOCAL, container_log, docker, started_container, unique_name, wait_for_log

SEED_PORT = 9178
SEED_COMMAND = ["--model_name", "digits", "--model_path", "/opt/ml", "--port", str(SEED_PORT)]
GRPC_READY = f"Server started on port {SEED_PORT}"
REST_READY = "Started REST server at"
# The image's HEALTHCHECK runs every 15 s; these containers run its same command every second, so that a
# test waits a second or two for "healthy", not fifteen.
HEALTH_INTERVAL = "1s"
HEALTHY_WITHIN_S = 60.0
STOP_GRACE_S = 10  # docker stop's default


@contextmanager
def seed_container(
    image: str, functional_settings: FunctionalSettings, docker_args: list[str], args: list[str]
) -> Iterator[str]:
    """`docker run -d [docker_args] IMAGE [args]`, removed at the end (its log kept in BUILD_LOGS)."""
    name = unique_name("seed")
    command = ["docker", "run", "-d", "--name", name, "--health-interval", HEALTH_INTERVAL, *docker_args, image, *args]
    with started_container(command, name, functional_settings.build_logs) as container:
        yield container


def wait_until_healthy(container: str) -> str:
    """The output of the HEALTHCHECK run that found the container healthy; raises if it turns unhealthy
    or is not healthy in time."""
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        state: dict[str, Any] = json.loads(docker("inspect", "-f", "{{json .State.Health}}", container).stdout)
        if state["Status"] == "healthy":
            return state["Log"][-1]["Output"]
        if state["Status"] == "unhealthy" or time.monotonic() > deadline:
            raise AssertionError(f"{state['Status']}: {state['Log'][-3:]}\n{container_log(container)[-3000:]}")
        time.sleep(0.5)


@pytest.mark.parametrize(
    ("rest_args", "ready", "probe"),
    [
        ([], GRPC_READY, f"gRPC health on port {SEED_PORT}: SERVING"),
        (["--rest_port", "8000"], REST_READY, "http://127.0.0.1:8000/v1/health/ready answered 200"),
    ],
    ids=["grpc-only", "with-rest"],
)
def test_the_seed_command_serves_digits_from_one_healthy_container(
    image: str,
    models_dir: Path,
    functional_settings: FunctionalSettings,
    rest_args: list[str],
    ready: str,
    probe: str,
) -> None:
    port = free_port()
    mounts = ["-v", f"{models_dir / 'digits'}:/opt/ml:ro", "-p", f"{LOCAL}:{port}:{SEED_PORT}"]
    with seed_container(image, functional_settings, mounts, [*SEED_COMMAND, *rest_args]) as container:
        wait_for_log(container, ready)
        images, labels = np.load(models_dir / "data" / "imgs.npy"), np.load(models_dir / "data" / "labels.npy")
        client = ovmsclient.make_grpc_client(f"{LOCAL}:{port}")
        predicted = np.concatenate(
            [client.predict({"x": batch}, "digits").argmax(axis=1) for batch in np.array_split(images, 4)]
        )
        assert float(np.mean(predicted == labels)) >= 0.95
        processes = docker("top", container, "-o", "pid,args").stdout
        assert "ovms redis 127.0.0.1:" in processes, processes  # the embedded broker, named by the supervisor
        assert "ovms worker CPU" in processes, processes  # named by the supervisor (ovms.titled)
        assert wait_until_healthy(container).strip() == probe


# Stop the container's worker, found by its title: the image has no procps (no pkill, no kill binary).
STOP_WORKER = (
    "import os, pathlib, signal; os.kill(next(int(p.name) for p in pathlib.Path('/proc').iterdir()"
    " if p.name.isdigit() and (p / 'cmdline').read_bytes().startswith(b'ovms worker')), signal.SIGSTOP)"
)


def test_a_hung_worker_turns_the_container_unhealthy(
    image: str, models_dir: Path, functional_settings: FunctionalSettings
) -> None:
    """Every role runs in the one container, so its health is readiness: a worker that hangs (SIGSTOP; its
    heartbeat lapses) leaves the frontends alive but nothing served, and the container must say so."""
    mounts = ["-v", f"{models_dir / 'digits'}:/opt/ml:ro"]
    with seed_container(image, functional_settings, mounts, [*SEED_COMMAND, "--rest_port", "8000"]) as container:
        wait_until_healthy(container)
        docker("exec", container, "python", "-c", STOP_WORKER)
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while (status := docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()) != "unhealthy":
            assert time.monotonic() < deadline, f"still {status} with its worker stopped"
            time.sleep(0.5)
        last = json.loads(docker("inspect", "-f", "{{json .State.Health}}", container).stdout)["Log"][-1]["Output"]
        assert "/v1/health/ready" in last and "503" in last, last


def test_config_path_and_log_path_log_to_the_file_and_to_docker_logs(
    image: str, models_dir: Path, functional_settings: FunctionalSettings
) -> None:
    args = ["--config_path", "/opt/ml/config.json", "--port", "9001", "--log_level=DEBUG"]
    args.append("--log_path=/var/log/ie_serving.log")
    with seed_container(image, functional_settings, ["-v", f"{models_dir}:/opt/ml:ro"], args) as container:
        wait_for_log(container, "Server started on port 9001")
        in_file = docker("exec", container, "cat", "/var/log/ie_serving.log").stdout
        in_docker_logs = container_log(container)
        for log in (in_file, in_docker_logs):
            assert "Server started on port 9001" in log
            assert "Loaded model digits" in log
            assert "[debug]" in log  # --log_level=DEBUG


def test_docker_stop_is_a_clean_exit_within_the_grace_period(
    image: str, models_dir: Path, functional_settings: FunctionalSettings
) -> None:
    with seed_container(image, functional_settings, ["-v", f"{models_dir / 'digits'}:/opt/ml:ro"], SEED_COMMAND) as c:
        wait_for_log(c, GRPC_READY)
        started = time.monotonic()
        docker("stop", "--time", str(STOP_GRACE_S), c, timeout_s=STOP_GRACE_S + 60)
        stopped_in_s = time.monotonic() - started
        state = json.loads(docker("inspect", "-f", "{{json .State}}", c).stdout)
        assert state["ExitCode"] == 0, container_log(c)[-3000:]  # SIGKILL after the grace period: 137
        assert stopped_in_s < STOP_GRACE_S
