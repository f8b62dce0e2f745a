"""A docker-compose project of the repository's compose file(s), run as a user runs it: its own project name
and free host ports (nothing clashes with a `make run` or another project on the machine), the image the
tests built (`--no-build`) and Redis from the offline base image, whose `redis-server`, `redis-sentinel` and
`redis-cli` are Debian's (REDIS_IMAGE). `compose_stack` brings it up healthy and takes it down with
`down -v` whatever happens.

Debian's docker-compose 1.29 (compose v1) runs the files when there is no `docker compose` plugin; both read
the same files (tests/integration/test_deployment.py renders them).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from tasks.broker import free_port
from tests.support.docker import REPO, docker

REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "ovms-base:bookworm")  # the offline build's base: Debian's Redis
REDIS_PASSWORD = "c0mpose-Pw"
FLOWER_USER, FLOWER_PASSWORD = "ops", "fl0wer-pw"
HEALTHY_TIMEOUT_S = 150.0  # the services' start periods are longer; healthy takes ~30-60 s here
PROJECT_LABEL = "com.docker.compose.project"


def _compose_program() -> list[str]:
    """`docker compose` (v2) when the plugin exists, else Debian's `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    return [legacy]


@dataclass
class Stack:
    """A running compose project and how to reach it from the host."""

    project: str
    files: list[str]
    env: dict[str, str]
    program: list[str]
    rest_url: str
    grpc_address: str
    flower_url: str
    killed: set[str] = field(default_factory=set)  # the containers a test `docker kill`ed

    def compose(self, *args: str, timeout_s: float = 180.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [argument for name in self.files for argument in ("-f", str(REPO / name))]
        argv = [*self.program, "-p", self.project, "--project-directory", str(REPO), *files, *args]
        result = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def containers(self, service: str) -> list[str]:
        """The ids of the service's running containers."""
        return docker(
            "ps", "-q", "--no-trunc",
            "--filter", f"label={PROJECT_LABEL}={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip

    def wait_healthy(self, services: tuple[str, ...], counts: dict[str, int] | None = None) -> float:
        """Seconds until every container of `services` (`counts[service]` of them, else 1) is healthy."""
        started = time.monotonic()
        counts = counts or {}
        while True:
            states = {}
            for service in services:
                ids = self.containers(service)
                states[service] = [health(i) for i in ids]
            if all(len(s) == counts.get(name, 1) and set(s) == {"healthy"} for name, s in states.items()):
                return time.monotonic() - started
            if any("unhealthy" in s for s in states.values()) or time.monotonic() - started > HEALTHY_TIMEOUT_S:
                logs = self.compose("logs", "--tail", "40", check=False).stdout
                raise AssertionError(f"not all healthy: {states}\n{logs[-6000:]}")
            time.sleep(1)


def health(container: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", container, check=False).stdout.strip() or "gone"


def project_resources(project: str) -> dict[str, list[str]]:
    """Every container (running or not), network and volume labelled as the project's."""
    label = f"label={PROJECT_LABEL}={project}"
    return {
        "containers": docker("ps", "-a", "-q", "--no-trunc", "--filter", label).stdout.split(),
        "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
    }


@contextmanager
def compose_stack(image: str, files: list[str], healthy: tuple[str, ...]) -> Iterator[Stack]:
    """The compose project of `files` on `image`, up with every service of `healthy` healthy; `down -v` at
    the end, also when a test failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "OVMS_", "FLOWER_", "REDIS_"))}
    grpc_port, rest_port, flower_port = free_port(), free_port(), free_port()
    while len({grpc_port, rest_port, flower_port}) < 3:  # a port just closed can be handed out twice
        rest_port, flower_port = free_port(), free_port()
    env.update(
        OVMS_IMAGE=image,
        REDIS_IMAGE=REDIS_IMAGE,
        REDIS_PASSWORD=REDIS_PASSWORD,
        FLOWER_USER=FLOWER_USER,
        FLOWER_PASSWORD=FLOWER_PASSWORD,
        OVMS_GRPC_PORT=str(grpc_port),
        OVMS_REST_PORT=str(rest_port),
        FLOWER_PORT=str(flower_port),
    )
    stack = Stack(
        project=f"ovmst{secrets.token_hex(4)}",
        files=files,
        env=env,
        program=_compose_program(),
        rest_url=f"http://127.0.0.1:{rest_port}",
        grpc_address=f"127.0.0.1:{grpc_port}",
        flower_url=f"http://127.0.0.1:{flower_port}",
    )
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--no-build", timeout_s=HEALTHY_TIMEOUT_S)
        stack.wait_healthy(healthy)
        print(f"\n`up -d` of {' + '.join(files)} to all healthy: {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
