"""Live model lifecycle: versions appear and go, config.json changes, readiness follows — under load."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.stack import OvmsProcess


def _copy_version(models_dir: Path, source: str, repository: Path, version: int, source_version: int = 1) -> None:
    """Write a version the way an operator would: files first into a scratch dir, then one rename."""
    scratch = repository / f".incoming-{version}"
    shutil.copytree(models_dir / source / str(source_version), scratch)
    scratch.rename(repository / str(version))


def _states(server: OvmsProcess, model: str) -> dict[int, str]:
    reply = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=5)
    if reply.status_code != 200:
        return {}
    return {int(entry["version"]): entry["state"] for entry in reply.json()["model_version_status"]}


def _wait_for(condition, timeout_s: float = 30.0, what: str = "condition") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout_s} s")


def _predict(server: OvmsProcess, model: str, version: int | None = None) -> requests.Response:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(server.rest_url + path, json={"instances": [[1.0, 2.0, 3.0, 4.0]]}, timeout=30)


class Load:
    """Clients sending predicts without a version, back to back, counting every failure."""

    def __init__(self, server: OvmsProcess, model: str, clients: int = 4) -> None:
        self.server, self.model = server, model
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            reply = session.post(
                f"{self.server.rest_url}/v1/models/{self.model}:predict",
                json={"instances": [[1.0, 2.0, 3.0, 4.0]]},
                timeout=30,
            )
            if reply.status_code == 200:
                self.ok += 1
            else:
                self.failures.append(f"{reply.status_code} {reply.text}")


@pytest.fixture
def repository(tmp_path: Path, models_dir: Path) -> Path:
    """A `versioned` repository holding only version 1 (y = x + 1)."""
    root = tmp_path / "repo" / "versioned"
    root.mkdir(parents=True)
    _copy_version(models_dir, "versioned", root, 1)
    return root


def test_new_version_loads_default_moves_removed_unloads_and_reappears(launch, repository, models_dir):
    server = launch(
        "--model_name",
        "life",
        "--model_path",
        str(repository),
        "--model_version_policy",
        '{"all": {}}',
        "--file_system_poll_wait_seconds",
        "1",
    )
    assert _states(server, "life") == {1: "AVAILABLE"}
    assert _predict(server, "life").json() == {"predictions": [[2.0, 3.0, 4.0, 5.0]]}

    _copy_version(models_dir, "versioned", repository, 2, source_version=2)
    gap = _wait_for(lambda: _states(server, "life").get(2) == "AVAILABLE", what="version 2 AVAILABLE")
    print(f"new version AVAILABLE {gap * 1000:.0f} ms after it appeared")
    log = server.log()
    warm_up = log.index("Model life version 2: warm-up inference took")
    assert warm_up < log.index("Loaded model life; version: 2; state: AVAILABLE"), "AVAILABLE only after warm-up"
    assert _predict(server, "life").json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}, "default moves to 2"

    shutil.rmtree(repository / "1")
    _wait_for(lambda: _states(server, "life").get(1) == "END", what="version 1 END")
    reply = _predict(server, "life", version=1)
    assert reply.status_code == 404 and reply.json() == {"error": "Model with requested version is retired"}

    _copy_version(models_dir, "versioned", repository, 1)
    _wait_for(lambda: _states(server, "life").get(1) == "AVAILABLE", what="version 1 back")
    assert _predict(server, "life", version=1).json() == {"predictions": [[2.0, 3.0, 4.0, 5.0]]}


def test_a_version_still_being_written_waits_until_complete(launch, repository, models_dir):
    server = launch(
        "--model_name",
        "partial",
        "--model_path",
        str(repository),
        "--model_version_policy",
        '{"all": {}}',
        "--file_system_poll_wait_seconds",
        "1",
    )
    incoming = repository / "2"
    incoming.mkdir()
    shutil.copy(models_dir / "versioned" / "2" / "model.xml", incoming / "model.xml")
    time.sleep(3)
    assert _states(server, "partial").get(2) in (None, "START"), "an IR without its .bin must not load"
    shutil.copy(models_dir / "versioned" / "2" / "model.bin", incoming / "model.bin")
    _wait_for(lambda: _states(server, "partial").get(2) == "AVAILABLE", what="version 2 AVAILABLE")
    assert _predict(server, "partial", version=2).json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}


def test_swapping_versions_under_load_fails_no_request(launch, repository, models_dir):
    """latest 1: version 2 appears, becomes the default, version 1 unloads — while clients keep asking."""
    server = launch("--model_name", "swap", "--model_path", str(repository), "--file_system_poll_wait_seconds", "1")
    with Load(server, "swap") as load:
        time.sleep(1.0)
        _copy_version(models_dir, "versioned", repository, 2, source_version=2)
        _wait_for(lambda: _states(server, "swap") == {1: "END", 2: "AVAILABLE"}, what="the swap")
        time.sleep(1.0)
    print(f"swap under load: {load.ok} requests served, {len(load.failures)} failed")
    assert load.failures == []
    assert load.ok > 50


def _write_config(path: Path, models: dict[str, Path], **extra: object) -> None:
    entries = [{"config": {"name": name, "base_path": str(base), **extra}} for name, base in models.items()]
    path.write_text(json.dumps({"model_config_list": entries}))


def test_config_reload_api_adds_and_removes_models_without_a_blip(launch, repository, models_dir, tmp_path):
    config = tmp_path / "config.json"
    _write_config(config, {"steady": repository})
    server = launch("--config_path", str(config), "--file_system_poll_wait_seconds", "0")
    reply = requests.post(f"{server.rest_url}/v1/config/reload", timeout=60)
    assert reply.status_code == 200, "nothing changed"
    assert reply.json()["steady"]["model_version_status"][0]["state"] == "AVAILABLE"

    with Load(server, "steady") as load:
        time.sleep(0.5)
        _write_config(config, {"steady": repository, "added": models_dir / "mapped"})
        reply = requests.post(f"{server.rest_url}/v1/config/reload", timeout=60)
        assert reply.status_code == 201, reply.text
        assert reply.json()["added"]["model_version_status"][0]["state"] == "AVAILABLE"
        added = requests.post(f"{server.rest_url}/v1/models/added:predict", json={"instances": [[1, 1, 1]]}, timeout=30)
        assert added.json() == {"predictions": [[3.0, 3.0, 3.0]]}

        config.write_text("{not json")
        reply = requests.post(f"{server.rest_url}/v1/config/reload", timeout=60)
        assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]

        _write_config(config, {"steady": repository})
        reply = requests.post(f"{server.rest_url}/v1/config/reload", timeout=60)
        assert reply.status_code == 201
        assert reply.json()["added"]["model_version_status"][0]["state"] == "END"
        time.sleep(0.5)
    assert load.failures == [] and load.ok > 20, "untouched models keep serving through reloads"
    assert (
        requests.get(f"{server.rest_url}/v1/config", timeout=10).json()["added"]["model_version_status"][0]["state"]
        == "END"
    )


def test_config_file_is_watched_and_an_invalid_one_changes_nothing(launch, repository, models_dir, tmp_path):
    config = tmp_path / "config.json"
    _write_config(config, {"watched": repository})
    server = launch("--config_path", str(config), "--file_system_poll_wait_seconds", "1")
    config.write_text('{"model_config_list": [{"config": {"name": "x", "base_path": "/x", "bogus": 1}}]}')
    _wait_for(lambda: "Configuration file not applied" in server.log(), what="the rejection logged")
    assert _states(server, "watched") == {1: "AVAILABLE"}
    _write_config(config, {"watched": repository}, max_batch_size=4)
    _wait_for(lambda: "configuration changed" in server.log(), what="the change applied")
    assert _predict(server, "watched").status_code == 200


def test_readiness_and_health_follow_the_models(launch, repository, tmp_path, models_dir):
    config = tmp_path / "config.json"
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    _write_config(config, {"ready": repository, "late": empty})
    server = launch("--config_path", str(config), "--file_system_poll_wait_seconds", "1")
    assert requests.get(f"{server.rest_url}/v1/health/live", timeout=5).status_code == 200
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def grpc_status() -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status

        reply = requests.get(f"{server.rest_url}/v1/health/ready", timeout=5)
        assert reply.status_code == 503 and reply.json()["models"] == {"ready": True, "late": False}
        _wait_for(lambda: grpc_status() == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
        _copy_version(models_dir, "versioned", empty, 1)
        _wait_for(
            lambda: requests.get(f"{server.rest_url}/v1/health/ready", timeout=5).status_code == 200, what="ready"
        )
        _wait_for(lambda: grpc_status() == health_pb2.HealthCheckResponse.SERVING, what="SERVING")
