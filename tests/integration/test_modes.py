"""Single-model flags, version policies, shape settings and logging, each through a real `ovms`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import requests
from ovmsclient import make_grpc_client

from tests.support.stack import OvmsProcess


def _states(process: OvmsProcess, model: str) -> dict[str, str]:
    reply = requests.get(f"{process.rest_url}/v1/models/{model}", timeout=10)
    assert reply.status_code == 200, reply.text
    return {entry["version"]: entry["state"] for entry in reply.json()["model_version_status"]}


def test_single_model_mode_serves_digits(launch, models_dir: Path):
    process = launch("--model_name", "digits1", "--model_path", str(models_dir / "digits"))
    images = np.load(models_dir / "data" / "imgs.npy")[:50]
    labels = np.load(models_dir / "data" / "labels.npy")[:50]
    outputs = make_grpc_client(process.grpc_address).predict({"x": images}, "digits1")
    assert (outputs.argmax(axis=1) == labels).mean() >= 0.9


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, {"2": "AVAILABLE"}),  # the seed's default: latest 1
        ('{"latest": {"num_versions": 2}}', {"1": "AVAILABLE", "2": "AVAILABLE"}),
        ('{"specific": {"versions": [1]}}', {"1": "AVAILABLE"}),
        ('{"all": {}}', {"1": "AVAILABLE", "2": "AVAILABLE"}),
    ],
)
def test_version_policies(launch, models_dir: Path, policy: str | None, expected: dict[str, str]):
    name = f"policy{len(expected)}{'x' if policy is None else abs(hash(policy)) % 1000}"
    flags = ["--model_name", name, "--model_path", str(models_dir / "versioned")]
    if policy:
        flags += ["--model_version_policy", policy]
    process = launch(*flags)
    assert _states(process, name) == expected
    default = max(int(v) for v in expected)
    want = np.full((1, 4), 6.0 if default == 2 else 4.0)  # v1 computes x + 1, v2 computes x * 2
    outputs = make_grpc_client(process.grpc_address).predict({"x": np.full((1, 4), 3, np.float32)}, name)
    np.testing.assert_array_equal(outputs, want)
    reply = requests.post(
        f"{process.rest_url}/v1/models/{name}:predict", json={"instances": [[3, 3, 3, 3]]}, timeout=10
    )
    assert reply.json()["predictions"] == want.tolist()


def test_batch_size_auto_serves_any_batch(launch, models_dir: Path):
    process = launch("--model_name", "resnet_any", "--model_path", str(models_dir / "resnet"), "--batch_size", "auto")
    images = np.random.default_rng(3).random((3, 3, 224, 224), dtype=np.float32)
    outputs = make_grpc_client(process.grpc_address).predict({"data": images}, "resnet_any")
    assert outputs.shape == (3, 1000)
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-2)


def test_fixed_batch_size_rejects_other_batches(launch, models_dir: Path):
    process = launch("--model_name", "digits4", "--model_path", str(models_dir / "digits"), "--batch_size", "4")
    reply = requests.post(
        f"{process.rest_url}/v1/models/digits4:predict", json={"instances": [[0.0] * 64] * 2}, timeout=10
    )
    assert reply.status_code == 400
    assert reply.json() == {"error": "Invalid input batch size - Expected: 4; Actual: 2"}


def test_logs_use_the_seed_format_and_log_path(launch, models_dir: Path, tmp_path: Path):
    log_file = tmp_path / "ovms.log"
    process = launch(
        "--model_name",
        "digits_log",
        "--model_path",
        str(models_dir / "digits"),
        "--log_level",
        "DEBUG",
        "--log_path",
        str(log_file),
    )
    line = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] \[serving\] \[(debug|info|warning|error)\] .+")
    text = log_file.read_text()
    assert f"Server started on port {process.grpc_port}" in text
    assert f"Started REST server at 0.0.0.0:{process.rest_port}" in text  # the address it binds
    assert all(line.match(entry) for entry in text.splitlines() if entry.startswith("[")), text


def test_shape_auto_serves_other_shapes_and_reports_impossible_ones(launch, models_dir: Path):
    """`--shape auto`: any shape the network can take is served; one it cannot is FAILED_PRECONDITION
    with the seed's message, and the model keeps serving."""
    process = launch("--model_name", "resnet_auto", "--model_path", str(models_dir / "resnet"), "--shape", "auto")
    client = make_grpc_client(process.grpc_address)
    smaller = np.random.default_rng(4).random((1, 3, 160, 160), dtype=np.float32)
    assert client.predict({"data": smaller}, "resnet_auto").shape == (1, 1000)
    url = f"{process.rest_url}/v1/models/resnet_auto:predict"
    reply = requests.post(url, json={"inputs": np.zeros((1, 5, 32, 32)).tolist()}, timeout=30)
    assert reply.status_code == 412
    assert reply.json() == {"error": "Model could not be reshaped with requested shape"}
    usual = np.random.default_rng(5).random((1, 3, 224, 224), dtype=np.float32)
    assert client.predict({"data": usual}, "resnet_auto").shape == (1, 1000)


def test_openvino_errors_reach_clients_without_its_source_locations(launch, models_dir: Path):
    """A model OpenVINO cannot reshape fails to load; its status says why in OpenVINO's words, without
    the C++ source paths OpenVINO prefixes them with."""
    process = launch("--model_name", "bad", "--model_path", str(models_dir / "resnet"), "--shape", "(1,5,32,32)")
    status = requests.get(f"{process.rest_url}/v1/models/bad", timeout=10).json()["model_version_status"][0]
    message = status["status"]["error_message"]
    assert message.startswith("Model could not be reshaped with requested shape: "), message
    assert len(message) > len("Model could not be reshaped with requested shape: ") + 10, message
    assert "src/" not in message and ".cpp" not in message and ".h:" not in message, message
