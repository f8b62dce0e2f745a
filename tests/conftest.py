"""Shared fixtures: example models, a real Redis, and real `ovms` processes started per test session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.broker import EmbeddedRedis
from tests.support.docker import build_image, docker_engine
from tests.support.stack import REPO, OvmsProcess, private_redis, start_ovms

MODELS = REPO / "models"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The example models, built locally (cached) by the same script `make run` uses."""
    subprocess.run([sys.executable, str(REPO / "ops" / "build_models.py"), "--output", str(MODELS)], check=True)
    return MODELS


redis_url = pytest.fixture(scope="session", name="redis_url")(private_redis)


@pytest.fixture(scope="session")
def docker_image() -> Iterator[str]:
    """The project's image (`make docker_build_offline`, tagged $IMAGE or ovms:test) on a running Docker
    engine, for the session; an engine the session had to start is stopped at its end."""
    with docker_engine():
        yield build_image()


@pytest.fixture(scope="session")
def server(models_dir: Path, redis_url: str) -> Iterator[OvmsProcess]:
    """`ovms` serving every example model (all roles in one command) on the session's Redis."""
    process = start_ovms(["--config_path", str(models_dir / "config.json"), "--broker_url", redis_url], rest=True)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(small_config: Path, redis_url: str) -> Iterator[OvmsProcess]:
    """An `ovms api` process alone (start workers beside it as the test needs) on the module's Redis:
    modules that freeze or kill workers give themselves a private one (see tests.support.stack)."""
    process = start_ovms(["--config_path", str(small_config), "--broker_url", redis_url], role="api")
    yield process
    process.stop()


def _breakable_redis() -> Iterator[EmbeddedRedis]:
    """A Redis server of the test's own, for tests that stop, pause (SIGSTOP) or restart it."""
    server = EmbeddedRedis()
    server.start()
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGCONT)  # a paused one must be able to stop
    server.stop()


broker = pytest.fixture(name="broker")(_breakable_redis)
result_backend = pytest.fixture(name="result_backend")(_breakable_redis)  # a second one, apart from the broker


@pytest.fixture
def launch(redis_url: str) -> Iterator:
    """Start `ovms` with the given flags on the session's Redis (call it as often as needed); every
    process it started is stopped after the test."""
    started: list[OvmsProcess] = []

    def _launch(*args: str) -> OvmsProcess:
        process = start_ovms([*args, "--broker_url", redis_url])
        started.append(process)
        return process

    yield _launch
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def small_config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config with the quick-loading models only, for stacks a test module starts and breaks."""
    config = {
        "model_config_list": [
            {
                "config": {
                    "name": "versioned",
                    "base_path": str(models_dir / "versioned"),
                    "model_version_policy": {"all": {}},
                }
            },
            {"config": {"name": "resnet", "base_path": str(models_dir / "resnet")}},
        ]
    }
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(config))
    return path
