"""Model repositories in S3 and GCS, through `open_storage`, against real emulators (moto_server and
gcp-storage-emulator running as child processes)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import pytest

from inference.model_config import ConfigError
from inference.storage import ModelStorage, open_storage
from tasks.broker import free_port
from tests.support.emulators import Cloud, GcsCloud, S3Cloud, gcs_emulator, moto_server

PREFIX = "models/versioned"
NO_AUTH_MOTO = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}  # moto then checks access keys against its IAM


@pytest.fixture(scope="module")
def clean_env() -> Iterator[pytest.MonkeyPatch]:
    """No credentials or endpoints from the developer's environment leak into these tests."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", "/dev/null")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield patch


@pytest.fixture(scope="module")
def s3_cloud(clean_env: pytest.MonkeyPatch) -> Iterator[S3Cloud]:
    with moto_server() as endpoint:
        cloud = S3Cloud(endpoint)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cloud.env.items():
                patch.setenv(name, value)
            yield cloud


@pytest.fixture(scope="module")
def gcs_cloud(clean_env: pytest.MonkeyPatch) -> Iterator[GcsCloud]:
    with gcs_emulator() as endpoint:
        cloud = GcsCloud(endpoint)
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cloud.env.items():
                patch.setenv(name, value)
            yield cloud


@pytest.fixture(scope="module", params=["s3", "gcs"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    return request.getfixturevalue(f"{request.param}_cloud")


@pytest.fixture
def bucket(cloud: Cloud, models_dir: Path) -> str:
    """A fresh bucket holding the example model `versioned` (IR, versions 1 and 2) under PREFIX."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    cloud.create_bucket(name)
    for path in sorted((models_dir / "versioned").glob("*/*")):
        cloud.put(name, f"{PREFIX}/{path.parent.name}/{path.name}", path.read_bytes())
    return name


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def storage_for(cloud: Cloud, bucket: str, cache_root: Path, prefix: str = PREFIX) -> ModelStorage:
    return open_storage(f"{cloud.scheme}://{bucket}/{prefix}", cache_root)


def files_under(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes() for path in directory.rglob("*") if path.is_file()
    }


def test_lists_fingerprints_and_fetches_identical_files(
    cloud: Cloud, bucket: str, cache_root: Path, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = storage_for(cloud, bucket, cache_root)
    assert storage.list_versions() == [1, 2]
    first, second = storage.fingerprint(1), storage.fingerprint(2)
    assert first is not None and second is not None and first != second
    assert storage.fingerprint(1) == first
    with caplog.at_level(logging.INFO, logger="serving"):
        path = storage.fetch(1)
        assert storage.fetch(1) == path  # unchanged: served from the cache
    assert path.is_relative_to(cache_root) and path.name == "1"
    assert files_under(path) == files_under(models_dir / "versioned" / "1")
    assert sum(record.message.startswith("Fetched") for record in caplog.records) == 1


def test_fetched_models_run_in_openvino(cloud: Cloud, bucket: str, cache_root: Path) -> None:
    storage = storage_for(cloud, bucket, cache_root)
    core = ov.Core()
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    for version, expected in ((1, x + 1), (2, x * 2)):
        compiled = core.compile_model(core.read_model(storage.fetch(version) / "model.xml"), "CPU")
        np.testing.assert_allclose(compiled({"x": x})[compiled.output(0)], expected)


def test_new_versions_appear_and_deleted_ones_disappear(
    cloud: Cloud, bucket: str, cache_root: Path, models_dir: Path
) -> None:
    storage = storage_for(cloud, bucket, cache_root)
    for name in ("model.xml", "model.bin"):
        cloud.put(bucket, f"{PREFIX}/3/{name}", (models_dir / "versioned" / "2" / name).read_bytes())
    cloud.put(bucket, f"{PREFIX}/4/model.xml", b"<net/>")  # still uploading: no .bin yet
    cloud.put(bucket, f"{PREFIX}/notes/readme.txt", b"not a version")
    assert storage.list_versions() == [1, 2, 3, 4]
    assert storage.fingerprint(3) is not None
    assert storage.fingerprint(4) is None
    with pytest.raises(ConfigError, match="no complete model"):
        storage.fetch(4)
    for name in ("model.xml", "model.bin"):
        cloud.delete(bucket, f"{PREFIX}/3/{name}")
    assert storage.list_versions() == [1, 2, 4]
    assert storage.fingerprint(3) is None


def test_a_changed_version_is_downloaded_again(cloud: Cloud, bucket: str, cache_root: Path, models_dir: Path) -> None:
    storage = storage_for(cloud, bucket, cache_root)
    before = storage.fingerprint(1)
    storage.fetch(1)
    new_weights = (models_dir / "versioned" / "2" / "model.bin").read_bytes() + b"\0" * 8
    cloud.put(bucket, f"{PREFIX}/1/model.bin", new_weights)
    assert storage.fingerprint(1) != before
    assert (storage.fetch(1) / "model.bin").read_bytes() == new_weights


def test_release_removes_the_cached_copy(cloud: Cloud, bucket: str, cache_root: Path) -> None:
    storage = storage_for(cloud, bucket, cache_root)
    path = storage.fetch(2)
    assert path.is_dir()
    storage.release(2)
    assert not path.exists()
    storage.release(2)  # idempotent
    assert storage.fetch(2).is_dir()  # and fetchable again


def test_missing_bucket(cloud: Cloud, cache_root: Path) -> None:
    storage = storage_for(cloud, "no-such-bucket-here", cache_root)
    with pytest.raises(ConfigError, match=rf"^{cloud.scheme}://no-such-bucket-here/{PREFIX}: bucket does not exist$"):
        storage.list_versions()
    with pytest.raises(ConfigError, match="bucket does not exist"):
        storage.fingerprint(1)


def test_missing_base_path(cloud: Cloud, bucket: str, cache_root: Path) -> None:
    with pytest.raises(ConfigError, match="base path not found"):
        storage_for(cloud, bucket, cache_root, prefix="models/nothing-here").list_versions()


def test_escaping_keys_are_never_written_outside_the_cache(
    cloud: Cloud, bucket: str, cache_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for key in cloud.unsafe_keys:
        cloud.put(bucket, f"{PREFIX}/{key}", b"evil")
    # A version whose model exists only under escaping keys is incomplete.
    cloud.put(bucket, f"{PREFIX}/5//model.xml", b"<net/>")
    cloud.put(bucket, f"{PREFIX}/5//model.bin", b"evil")
    storage = storage_for(cloud, bucket, cache_root)
    with caplog.at_level(logging.ERROR, logger="serving"):
        path = storage.fetch(1)
        assert storage.fingerprint(5) is None
    assert sorted(files_under(path)) == ["model.bin", "model.xml"]
    assert all(content != b"evil" for content in files_under(tmp_path).values())
    assert sum("Refusing" in record.message for record in caplog.records) == len(cloud.unsafe_keys) + 2
    with pytest.raises(ConfigError, match="no complete model"):
        storage.fetch(5)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_endpoint_fails_within_seconds(
    cloud: Cloud, kind: str, cache_root: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    port = free_port() if kind == "refused" else request.getfixturevalue("silent_port")
    for name, value in cloud.dead_env(port).items():
        monkeypatch.setenv(name, value)
    storage = storage_for(cloud, "some-bucket", cache_root)
    started = time.monotonic()
    with pytest.raises(
        ConfigError, match=rf"^{cloud.scheme}://some-bucket/{PREFIX}: cannot reach http://127\.0\.0\.1:{port}"
    ):
        storage.list_versions()
    assert time.monotonic() - started < 15  # botocore and google-cloud-storage default to minutes


# -- credentials


def test_s3_bad_credentials_are_access_denied(cache_root: Path, clean_env: pytest.MonkeyPatch) -> None:
    with moto_server(NO_AUTH_MOTO) as endpoint, pytest.MonkeyPatch.context() as patch:
        for name, value in S3Cloud(endpoint).env.items():
            patch.setenv(name, value)
        storage = open_storage("s3://models/versioned", cache_root)
        with pytest.raises(ConfigError, match=r"access denied \(InvalidAccessKeyId; check AWS_ACCESS_KEY_ID"):
            storage.list_versions()


def test_gcs_unreadable_credentials_file(
    gcs_cloud: GcsCloud, cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot use GOOGLE_APPLICATION_CREDENTIALS="):
        open_storage("gs://models/versioned", cache_root).list_versions()


class _RejectingTokenEndpoint(BaseHTTPRequestHandler):
    """An OAuth2 token endpoint that rejects every grant, as Google does for a revoked or forged key."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def rejected_service_account(tmp_path: Path) -> Iterator[Path]:
    """A well-formed service-account key file whose token endpoint rejects it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    server = ThreadingHTTPServer(("127.0.0.1", 0), _RejectingTokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    info = {
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "0" * 40,
        "private_key": pem.decode(),
        "client_email": "reader@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{server.server_address[1]}/token",
    }
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps(info))
    yield path
    server.shutdown()
    server.server_close()


def test_gcs_rejected_credentials_are_access_denied(
    gcs_cloud: GcsCloud, cache_root: Path, rejected_service_account: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(rejected_service_account))
    with pytest.raises(ConfigError, match=r"access denied: credentials rejected \(invalid_grant"):
        open_storage("gs://models/versioned", cache_root).list_versions()
