"""The functional tests' settings, named as the seed names them: each from the environment, else from a
`user_config.py` in the project root (a Python file assigning any of the names, e.g. `IMAGE = "ovms:dev"`),
else the default below. The environment wins, so that one run can override a user's file.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.docker import REPO

USER_CONFIG = REPO / "user_config.py"
# Where the container sees TEST_DIR: the config.json written there names its models by these paths, so a
# START_CONTAINER_COMMAND of one's own must mount {test_dir} here too.
MODELS_IN_CONTAINER = "/opt/ml"
DEFAULTS = {
    # The image to test; empty: `make docker_build_offline` builds ovms:test from this checkout first.
    "IMAGE": "",
    # Where the models and test data go (copied from models/); empty: a temporary directory, removed after.
    "TEST_DIR": "",
    # The server's --log_level: DEBUG or INFO, which keep the INFO lines CONTAINER_LOG_LINE and the tests
    # that match a worker's id read.
    "LOG_LEVEL": "INFO",
    # Where the artifacts go: every container's log, as <test or fixture>-<container name>.log.
    "BUILD_LOGS": str(Path(tempfile.gettempdir()) / "ovms-build-logs"),
    # How the server's container starts: a command printing the container's id last (as `docker run -d`
    # does), with placeholders {name} (unique per run), {image}, {test_dir}, {grpc_port} and {rest_port}
    # (free ports of this host, for gRPC and REST) and {log_level}.
    "START_CONTAINER_COMMAND": (
        "docker run -d --name {name} -v {test_dir}:" + MODELS_IN_CONTAINER + ":ro"
        " -p 127.0.0.1:{grpc_port}:9178 -p 127.0.0.1:{rest_port}:8000 {image}"
        " --config_path " + MODELS_IN_CONTAINER + "/config.json --port 9178 --rest_port 8000 --log_level {log_level}"
    ),
    # The line of the container's log that says the server serves (with REST, its last start-up line).
    "CONTAINER_LOG_LINE": "Started REST server at",
}


@dataclass(frozen=True)
class FunctionalSettings:
    image: str
    test_dir: str
    log_level: str
    build_logs: Path
    start_container_command: str
    container_log_line: str


def user_config(path: Path = USER_CONFIG) -> dict[str, str]:
    """The settings a `user_config.py` assigns (none if there is no such file)."""
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location("user_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: str(getattr(module, name)) for name in DEFAULTS if hasattr(module, name)}


def load(environ: Mapping[str, str] = os.environ, config_path: Path = USER_CONFIG) -> FunctionalSettings:
    """Each setting from `environ`, else `config_path`, else DEFAULTS."""
    configured = user_config(config_path)
    value = {name: environ.get(name, configured.get(name, default)) for name, default in DEFAULTS.items()}
    return FunctionalSettings(
        image=value["IMAGE"],
        test_dir=value["TEST_DIR"],
        log_level=value["LOG_LEVEL"],
        build_logs=Path(value["BUILD_LOGS"]),
        start_container_command=value["START_CONTAINER_COMMAND"],
        container_log_line=value["CONTAINER_LOG_LINE"],
    )
