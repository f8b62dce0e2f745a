"""A newcomer's first hour: a model that does not load says why — in the log, in its status (TF Serving REST
and KServe v2) and to a predict — through real `ovms` processes (each with its embedded Redis) and real
clients. Covers a broken model.xml, an empty model directory, a version directory given as the model's
path, relative base_paths in a config.json read from another working directory, and a worker that ends
its initial load serving nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from tests.support.broken_model import MATMUL_MISMATCH, break_model_xml
from tests.support.load import float_request
from tests.support.stack import REPO, OvmsProcess, start_ovms

NO_VERSIONS = "holds no version directories"
VERSION_NOT_FOUND = "Model with requested version is not found"  # the seed's message


@pytest.fixture(scope="module")
def repository(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config.json with relative base_paths beside its models: a good copy of digits, a broken one, an
    empty directory and a path that does not exist. The server runs from the project's directory."""
    root = tmp_path_factory.mktemp("load-errors")
    shutil.copytree(models_dir / "digits", root / "digits")
    shutil.copytree(models_dir / "digits", root / "broken")
    break_model_xml(root / "broken" / "1")
    (root / "empty").mkdir()
    models = {"digits": "digits", "broken": "broken", "empty": "./empty", "missing": "missing"}
    config = {"model_config_list": [{"config": {"name": n, "base_path": p}} for n, p in models.items()]}
    (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def stack(repository: Path) -> Iterator[OvmsProcess]:
    """`ovms --config_path <repository>/config.json`, started (as every test's ovms) in the project's directory."""
    assert not repository.is_relative_to(REPO)
    process = start_ovms(["--config_path", str(repository / "config.json")])
    yield process
    process.stop()


def status(server: OvmsProcess, model: str) -> requests.Response:
    return requests.get(f"{server.rest_url}/v1/models/{model}", timeout=10)


def predict(server: OvmsProcess, model: str, version: int | None = None) -> requests.Response:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(server.rest_url + path, json={"instances": [[0.0] * 64]}, timeout=30)


def test_relative_base_paths_resolve_against_the_config_files_directory(stack: OvmsProcess, repository: Path):
    assert predict(stack, "digits").status_code == 200
    assert f"Loading model: digits, version: 1, from path: {repository / 'digits'}\n" in stack.log()


def test_a_missing_base_path_is_reported_with_the_full_path_tried(stack: OvmsProcess, repository: Path):
    reply = status(stack, "missing")
    assert reply.status_code == 503
    assert reply.json() == {
        "error": f"Model missing: {repository / 'missing'}: base path not found (no such directory)"
    }
    assert f"Model missing: {repository / 'missing'}: base path not found" in stack.log()


def test_a_broken_model_xml_reports_openvinos_whole_reason(stack: OvmsProcess):
    """The status, the log and every predict say why in OpenVINO's words, its source locations left out."""
    (entry,) = status(stack, "broken").json()["model_version_status"]
    reason = entry["status"]["error_message"]
    assert (entry["version"], entry["state"], entry["status"]["error_code"]) == ("1", "END", "UNKNOWN")
    assert reason.startswith("While validating node") and MATMUL_MISMATCH in reason, reason
    assert ".cpp" not in reason and "\n" not in reason and len(reason) <= 500
    assert f"Model broken version 1 failed to load: {reason}\n" in stack.log()
    said = f"Model version 1 failed to load: {reason}"
    for version in (None, 1):
        reply = predict(stack, "broken", version)
        assert (reply.status_code, reply.json()) == (404, {"error": said})
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(float_request("broken", "x", np.zeros((1, 64), np.float32)), timeout=10)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.NOT_FOUND, said)
    ready = requests.get(f"{stack.rest_url}/v2/models/broken/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (400, {"error": f"Model version not ready: {said}"})
    metadata = requests.get(f"{stack.rest_url}/v2/models/broken", timeout=10)
    assert (metadata.status_code, metadata.json()) == (404, {"error": said})


def test_an_empty_model_directory_is_logged_and_reported(stack: OvmsProcess, repository: Path):
    reason = f"{repository / 'empty'}: {NO_VERSIONS}"
    assert f"[warning] Model empty: {reason}" in stack.log()
    for reply in (status(stack, "empty"), predict(stack, "empty")):
        assert reply.status_code == 404
        assert reply.json()["error"].startswith(f"{VERSION_NOT_FOUND}: {reason}"), reply.json()


def test_a_server_with_some_models_loaded_does_not_say_it_serves_nothing(stack: OvmsProcess):
    assert "loaded none of its" not in stack.log()


def test_a_version_directory_given_as_the_model_path_names_its_parent_and_nothing_loads(
    models_dir: Path, tmp_path: Path
):
    """`--model_path …/digits/1`: the warning and the status suggest the parent; the worker, which loaded
    nothing, says so at ERROR level with each model's reason, and readiness says not ready."""
    shutil.copytree(models_dir / "digits", tmp_path / "digits")
    version_dir = tmp_path / "digits" / "1"
    process = start_ovms(["--model_name", "digits", "--model_path", str(version_dir)])
    try:
        hint = f"{version_dir}: this looks like version directory 1 of a model; pass its parent {tmp_path / 'digits'}"
        log = process.log()
        assert f"[warning] Model digits: {hint}\n" in log
        assert "version directories must be positive integers" not in log, "one hint, not a warning per file"
        assert "[error] Worker " in log and "loaded none of its 1 model(s)" in log
        assert f"[error] Model digits is not served: {hint}\n" in log
        reply = status(process, "digits")
        assert (reply.status_code, reply.json()) == (
            404,
            {"error": f"Model with requested version is not found: {hint}"},
        )
        ready = requests.get(f"{process.rest_url}/v1/health/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (503, {"ready": False, "models": {"digits": False}})
    finally:
        process.stop()
