"""Serving from S3 (moto_server) and GCS (gcp-storage-emulator) through a real `ovms`: load, new and
removed versions, and a broken repository that is reported while the other models keep serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.emulators import GcsCloud, S3Cloud, gcs_emulator, moto_server
from tests.support.stack import OvmsProcess, private_redis, start_ovms

BUCKET = "models"


def _upload(cloud: S3Cloud | GcsCloud, models_dir: Path, model: str, prefix: str, versions: list[int]) -> None:
    for version in versions:
        for path in sorted((models_dir / model / str(version)).iterdir()):
            cloud.put(BUCKET, f"{prefix}/{version}/{path.name}", path.read_bytes())


def _states(server: OvmsProcess, model: str) -> dict[int, str]:
    reply = requests.get(f"{server.rest_url}/v1/models/{model}", timeout=5)
    return {int(e["version"]): e["state"] for e in reply.json().get("model_version_status", [])}


def _wait_for(condition, timeout_s: float = 30.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("condition not reached")
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Cloud]:
    with moto_server() as endpoint:
        cloud = S3Cloud(endpoint)
        cloud.create_bucket(BUCKET)
        yield cloud


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsCloud]:
    with gcs_emulator() as endpoint:
        cloud = GcsCloud(endpoint)
        cloud.create_bucket(BUCKET)
        yield cloud


# A Redis of the module's own: its models (from_s3, missing_bucket, …) stay out of the shared Redis's registry,
# where the session server would list them, without a worker, to later modules (the REST fuzzer sent jobs to
# from_s3 and got 503 "No live worker").
redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


@pytest.fixture(scope="module")
def server(s3, gcs, models_dir, redis_url, tmp_path_factory) -> Iterator[OvmsProcess]:
    _upload(s3, models_dir, "versioned", "repo/versioned", [1])
    _upload(gcs, models_dir, "mapped", "repo/mapped", [1])
    work = tmp_path_factory.mktemp("cloud")
    config = work / "config.json"
    entries = [
        {"name": "from_s3", "base_path": f"s3://{BUCKET}/repo/versioned", "model_version_policy": {"all": {}}},
        {"name": "from_gcs", "base_path": f"gs://{BUCKET}/repo/mapped"},
        {"name": "missing_bucket", "base_path": "s3://no-such-bucket/repo/versioned"},
        {"name": "local", "base_path": str(models_dir / "digits")},
    ]
    config.write_text(json.dumps({"model_config_list": [{"config": entry} for entry in entries]}))
    env = {**s3.env, **gcs.env, "OVMS_CACHE_DIR": str(work / "cache")}
    process = start_ovms(
        ["--config_path", str(config), "--broker_url", redis_url, "--file_system_poll_wait_seconds", "1"], env=env
    )
    yield process
    process.stop()


def test_models_load_from_s3_and_gcs(server):
    assert _states(server, "from_s3") == {1: "AVAILABLE"}
    assert _states(server, "from_gcs") == {1: "AVAILABLE"}
    s3_reply = requests.post(
        f"{server.rest_url}/v1/models/from_s3:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10
    )
    assert s3_reply.json() == {"predictions": [[2.0, 3.0, 4.0, 5.0]]}
    gcs_reply = requests.post(
        f"{server.rest_url}/v1/models/from_gcs:predict", json={"instances": [[1, 1, 1]]}, timeout=10
    )
    assert gcs_reply.json() == {"predictions": [[3.0, 3.0, 3.0]]}


def test_a_missing_bucket_is_reported_and_the_others_keep_serving(server):
    reply = requests.get(f"{server.rest_url}/v1/models/missing_bucket", timeout=5)
    assert reply.status_code == 503
    assert "no-such-bucket" in reply.json()["error"] and "bucket does not exist" in reply.json()["error"]
    assert "bucket does not exist" in server.log()
    local = requests.post(f"{server.rest_url}/v1/models/local:predict", json={"instances": [[0.0] * 64]}, timeout=10)
    assert local.status_code == 200
    ready = requests.get(f"{server.rest_url}/v1/health/ready", timeout=5)
    assert ready.status_code == 503 and ready.json()["models"]["missing_bucket"] is False


def test_versions_appear_and_disappear_in_s3(server, s3, models_dir):
    _upload(s3, models_dir, "versioned", "repo/versioned", [2])
    gap = _wait_for(lambda: _states(server, "from_s3").get(2) == "AVAILABLE")
    print(f"s3 version 2 AVAILABLE {gap * 1000:.0f} ms after upload")
    reply = requests.post(
        f"{server.rest_url}/v1/models/from_s3:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=10
    )
    assert reply.json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}
    for name in ("model.xml", "model.bin"):
        s3.delete(BUCKET, f"repo/versioned/1/{name}")
    _wait_for(lambda: _states(server, "from_s3").get(1) == "END")
