"""`make test_functional`: the client-facing integration tests again, against the server in a container of
the project's image, as users run it, and the seed's own `docker run` usage (test_seed_usage.py).

The `server` fixture here stands in for tests/conftest.py's: the same attributes (grpc_port, rest_port,
grpc_address, rest_url, log()), backed by one container that START_CONTAINER_COMMAND starts for the
session; `models_dir` is TEST_DIR, a copy of the example models and their test data with a config.json
naming them by their paths in the container. Settings: settings.py.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.broker import free_port
from tests.functional import settings
from tests.functional.settings import MODELS_IN_CONTAINER, FunctionalSettings
from tests.support.docker import (
    BUILD_TIMEOUT_S,
    LOCAL,
    build_image,
    container_log,
    docker_engine,
    missing_engine_reason,
    started_container,
    unique_name,
    wait_for_log,
)

FUNCTIONAL = Path(__file__).parent
# Tests of the re-run modules that need more than a server its clients reach, and why.
OWN_OVMS = "in the functional run: starts an ovms of its own"
NEEDS_THE_PROCESS = {
    "test_v2_rest.py::test_tokens_guard_v2_as_v1_and_health_stays_open": f"{OWN_OVMS} (tokens)",
    "test_v2_rest.py::test_the_body_limit_applies_to_binary_bodies": f"{OWN_OVMS} (tokens)",
    "test_v2_grpc.py::test_tokens_and_tls": f"{OWN_OVMS} (TLS and tokens)",
}


class ContainerServer:
    """The server in a container, with the attributes tests use of tests.support.stack.OvmsProcess."""

    def __init__(self, container: str, grpc_port: int, rest_port: int) -> None:
        self.container = container
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self.grpc_address = f"{LOCAL}:{grpc_port}"
        self.rest_url = f"http://{LOCAL}:{rest_port}"

    def log(self) -> str:
        return container_log(self.container)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip what needs the process itself (saying why). The image is built in the set-up of the first test
    that needs it (the `image` fixture): that test's time limit makes room for a build."""
    configured = settings.load()
    first = True
    for item in items:
        if FUNCTIONAL not in item.path.parents:
            continue
        key = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if key in NEEDS_THE_PROCESS:
            item.add_marker(pytest.mark.skip(reason=NEEDS_THE_PROCESS[key]))
        elif first and not configured.image and "image" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S + float(config.getini("timeout") or 0)))
            first = False


@pytest.fixture(scope="session")
def functional_settings() -> FunctionalSettings:
    return settings.load()


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    """A Docker engine (tests.support.docker); without one these tests are skipped, saying why."""
    reason = missing_engine_reason()
    if reason is not None:
        pytest.skip(reason)
    with docker_engine():
        yield


@pytest.fixture(scope="session")
def image(engine: None, functional_settings: FunctionalSettings) -> str:
    return functional_settings.image or build_image()


@pytest.fixture(scope="session")
def models_dir(models_dir: Path, functional_settings: FunctionalSettings) -> Iterator[Path]:
    """TEST_DIR: the example models (tests/conftest.py's `models_dir`) and their test data, with a
    config.json whose base paths are the container's (MODELS_IN_CONTAINER)."""
    given = bool(functional_settings.test_dir)
    target = Path(functional_settings.test_dir) if given else Path(tempfile.mkdtemp(prefix="ovms-functional-"))
    target.mkdir(parents=True, exist_ok=True)
    if not given:
        target.chmod(0o755)  # mkdtemp's 0700 would keep the image's user (uid 10001) out
    shutil.copytree(models_dir, target, dirs_exist_ok=True)
    config = json.loads((models_dir / "config.json").read_text())
    for entry in config["model_config_list"]:
        entry["config"]["base_path"] = f"{MODELS_IN_CONTAINER}/{Path(entry['config']['base_path']).name}"
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    yield target
    if not given:
        shutil.rmtree(target, ignore_errors=True)


def two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:  # a port closed a moment ago can be handed out again at once
        second = free_port()
    return first, second


@pytest.fixture(scope="session")
def server(image: str, models_dir: Path, functional_settings: FunctionalSettings) -> Iterator[ContainerServer]:
    """The container START_CONTAINER_COMMAND starts, once CONTAINER_LOG_LINE is in its log; its log goes
    to BUILD_LOGS when it is removed."""
    grpc_port, rest_port = two_free_ports()
    name = unique_name("functional")
    values = {
        "name": name,
        "image": image,
        "test_dir": str(models_dir),
        "grpc_port": grpc_port,
        "rest_port": rest_port,
        "log_level": functional_settings.log_level,
    }
    command = functional_settings.start_container_command.format(
        **{key: shlex.quote(str(value)) for key, value in values.items()}
    )
    started = time.monotonic()
    with started_container(shlex.split(command), name, functional_settings.build_logs) as container:
        wait_for_log(container, functional_settings.container_log_line)
        print(f"\n{name}: ready {time.monotonic() - started:.1f} s after {command}")
        yield ContainerServer(container, grpc_port, rest_port)
