"""The official Triton HTTP client (tritonclient.http, and tritonclient.http.aio) against our KServe v2 REST API.

tritonclient pins a protobuf older than the server's, so it lives in its own venv (.venv-triton, `make
triton-client`) and runs as a subprocess: one run executes every command and prints their answers as JSON.
Answers are compared with the TF Serving REST API's for the same inputs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.integration.test_v2_rest import TYPES
from tests.support import images
from tests.support.stack import OvmsProcess

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
TRITON_CLIENT = REPO / "tests" / "clients" / "triton_http_client.py"
NO_SUCH_MODEL = {"error": {"status": "404", "message": "Model with requested name is not found"}}
BINARY_WAYS = [(binary_in, binary_out) for binary_in in "01" for binary_out in "01"]
PHOTOS = images.photographs()
ENCODED_IMAGES = [images.jpeg(PHOTOS["china"], 48, 32), images.png(PHOTOS["flower"], 48, 32)]  # image_u8's size


@pytest.fixture(scope="module")
def files(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The inputs the client sends, as .npz files keyed by input name."""
    directory = tmp_path_factory.mktemp("triton")
    arrays = {
        "digits": {"x": np.load(models_dir / "data" / "imgs.npy")[:8].astype(np.float32)},
        "types": {name: np.array(values, dtype=dtype) for name, (_, dtype, values) in TYPES.items()},
        "versioned": {"x": np.array([[1, 2, 3, 4]], dtype=np.float32)},
        "wrong_type": {"x": np.array([[1, 2, 3, 4]], dtype=np.float64)},
        "images": {"image": np.array(ENCODED_IMAGES)},  # fixed-width bytes: the client sends them as BYTES
    }
    paths = {}
    for name, inputs in arrays.items():
        paths[name] = directory / f"{name}.npz"
        np.savez(paths[name], **inputs)
    return paths


@pytest.fixture(scope="module")
def answers(server: OvmsProcess, files: dict[str, Path]) -> dict[str, Any]:
    assert TRITON_PYTHON.exists(), f"{TRITON_PYTHON} is missing: `make test` installs it (`make triton-client`)"
    commands = {
        "live": "live",
        "ready": "ready",
        "model_ready": "model_ready versioned",
        "model_ready_v1": "model_ready versioned 1",
        "model_ready_unknown": "model_ready nope",
        "server_metadata": "server_metadata",
        "metadata": "metadata versioned",
        "metadata_v1": "metadata versioned 1",
        "metadata_unknown": "metadata nope",
        **{f"digits_{i}{o}": f"infer digits {files['digits']} {i} {o}" for i, o in BINARY_WAYS},
        **{f"types_{i}{o}": f"infer types {files['types']} {i} {o}" for i, o in BINARY_WAYS},
        "versioned_v1": f"infer versioned {files['versioned']} 1 1 1 request-42",
        "unknown_model": f"infer nope {files['versioned']} 1 1",
        "unknown_version": f"infer versioned {files['versioned']} 1 1 7",
        "wrong_type": f"infer versioned {files['wrong_type']} 1 1",
        # binary inputs only: the client sends JSON BYTES as UTF-8 text, which encoded images are not
        **{f"images_1{o}": f"infer image_u8 {files['images']} 1 {o}" for o in "01"},
        "async_infer": f"async_infer versioned {files['versioned']}",
        "aio": f"aio digits {files['digits']}",
        "index": "index",
        "config": "config versioned",
        "config_unknown": "config nope",
        "stats": "stats versioned 2",
        "stats_unknown": "stats nope",
        "load": "load versioned",
        "unload": "unload versioned",
    }
    run = subprocess.run(
        [str(TRITON_PYTHON), str(TRITON_CLIENT), f"localhost:{server.rest_port}", *commands.values()],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout)
    assert len(results) == len(commands)
    return dict(zip(commands, results, strict=True))


def tfs_outputs(server: OvmsProcess, model: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    body = {"inputs": {name: array.tolist() for name, array in inputs.items()}}
    outputs = requests.post(f"{server.rest_url}/v1/models/{model}:predict", json=body, timeout=60).json()["outputs"]
    return outputs if isinstance(outputs, dict) else {"only": outputs}


def test_health_and_readiness(answers: dict[str, Any]) -> None:
    assert (answers["live"], answers["ready"]) == (True, True)
    assert (answers["model_ready"], answers["model_ready_v1"], answers["model_ready_unknown"]) == (True, True, False)


def test_metadata(answers: dict[str, Any]) -> None:
    assert answers["server_metadata"] == {
        "name": "ovms-celery",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }
    expected = {
        "name": "versioned",
        "versions": ["1", "2"],
        "platform": "OpenVINO",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert answers["metadata"] == answers["metadata_v1"] == expected
    assert answers["metadata_unknown"] == NO_SUCH_MODEL


@pytest.mark.parametrize(("binary_in", "binary_out"), BINARY_WAYS)
def test_digits_every_binary_way_as_tf_serving_answers(
    answers: dict[str, Any],
    server: OvmsProcess,
    files: dict[str, Path],
    models_dir: Path,
    binary_in: str,
    binary_out: str,
) -> None:
    output = answers[f"digits_{binary_in}{binary_out}"]["outputs"]["probabilities"]
    assert (output["datatype"], output["shape"]) == ("FP32", [8, 10])
    expected = np.array(tfs_outputs(server, "digits", dict(np.load(files["digits"])))["only"], dtype=np.float32)
    np.testing.assert_allclose(np.array(output["values"], dtype=np.float32), expected, rtol=1e-6)
    labels = np.load(models_dir / "data" / "labels.npy")[:8]
    assert np.mean(np.argmax(output["values"], axis=1) == labels) >= 0.75


@pytest.mark.parametrize(("binary_in", "binary_out"), BINARY_WAYS)
def test_every_type_every_binary_way(
    answers: dict[str, Any], server: OvmsProcess, files: dict[str, Path], binary_in: str, binary_out: str
) -> None:
    inputs = dict(np.load(files["types"]))
    tfs = tfs_outputs(server, "types", inputs)
    outputs = answers[f"types_{binary_in}{binary_out}"]["outputs"]
    for name, (datatype, _, values) in TYPES.items():
        assert outputs[f"{name}_out"] == {"datatype": datatype, "shape": [1, 2], "values": values}
        assert outputs[f"{name}_out"]["values"] == tfs[f"{name}_out"]


def test_versions_and_request_id(answers: dict[str, Any]) -> None:
    assert answers["versioned_v1"] == {
        "model_version": "1",
        "id": "request-42",
        "outputs": {"y": {"datatype": "FP32", "shape": [1, 4], "values": [[2.0, 3.0, 4.0, 5.0]]}},
    }


def test_errors_carry_the_status_and_message(answers: dict[str, Any]) -> None:
    assert answers["unknown_model"] == NO_SUCH_MODEL
    missing_version = {"error": {"status": "404", "message": "Model with requested version is not found"}}
    assert answers["unknown_version"] == missing_version
    wrong_type = {"error": {"status": "400", "message": "Invalid input precision - Expected: FP32; Actual: FP64"}}
    assert answers["wrong_type"] == wrong_type


def test_async_infer(answers: dict[str, Any]) -> None:
    assert answers["async_infer"]["ids"] == ["0", "1", "2", "3"]
    assert answers["async_infer"]["first"]["outputs"]["y"]["values"] == [[2.0, 4.0, 6.0, 8.0]]


def test_the_aio_client(answers: dict[str, Any]) -> None:
    aio = answers["aio"]
    assert (aio["live"], aio["ready"], aio["metadata"]["name"]) == (True, True, "digits")
    assert aio["infer"]["outputs"]["probabilities"] == answers["digits_11"]["outputs"]["probabilities"]
    assert aio["missing"] == NO_SUCH_MODEL["error"]


def test_repository_index(answers: dict[str, Any]) -> None:
    assert {"name": "versioned", "version": "2", "state": "READY"} in answers["index"]


def test_model_configuration(answers: dict[str, Any]) -> None:
    assert answers["config"] == {
        "name": "versioned",
        "platform": "OpenVINO",
        "backend": "openvino",
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
    }
    assert answers["config_unknown"] == NO_SUCH_MODEL


def test_statistics(answers: dict[str, Any]) -> None:
    """The commands before it ran inferences on versioned 2 (the default) that the workers count."""
    (entry,) = answers["stats"]["model_stats"]
    assert (entry["name"], entry["version"]) == ("versioned", "2")
    assert set(entry["inference_stats"]) >= {"success", "fail", "queue", "compute_input", "compute_infer"}
    assert answers["stats_unknown"] == NO_SUCH_MODEL


def test_repository_load_and_unload(answers: dict[str, Any]) -> None:
    assert answers["load"] is None
    assert answers["unload"]["error"]["status"] == "501"
    assert "remove it from config.json" in answers["unload"]["error"]["message"]


def test_infer_images_as_binary_bytes_decoded_as_a_client_decodes_them(answers: dict[str, Any]) -> None:
    """A JPEG and a PNG as one binary BYTES tensor of 2 elements, decoded on the worker into image_u8's
    NHWC U8 pixels: exactly what OpenCV gives the client for the same bytes, in binary and JSON answers."""
    expected = np.stack([images.decoded(data) for data in ENCODED_IMAGES])
    for binary_out in "01":
        pixels = answers[f"images_1{binary_out}"]["outputs"]["pixels"]
        assert (pixels["datatype"], pixels["shape"]) == ("UINT8", [2, 32, 48, 3])
        np.testing.assert_array_equal(np.array(pixels["values"], dtype=np.uint8), expected)
