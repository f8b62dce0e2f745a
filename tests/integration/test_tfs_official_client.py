"""The official TensorFlow Serving client (tensorflow-serving-api + tf.make_tensor_proto) against our server.

TensorFlow lives in its own venv (.venv-tfs, `make tfs-client`), so the client runs as a subprocess:
one run executes every command, because importing TensorFlow alone takes seconds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import ovmsclient
import pytest

from tests.support import images

REPO = Path(__file__).resolve().parents[2]
TFS_PYTHON = REPO / ".venv-tfs" / "bin" / "python"
TFS_CLIENT = REPO / "tests" / "clients" / "tfs_client.py"


@pytest.fixture(scope="module")
def digits_batch(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The held-out digits as an .npy file for the client to send, and their labels."""
    path = tmp_path_factory.mktemp("tfs") / "digits.npy"
    np.save(path, np.load(models_dir / "data" / "imgs.npy"))
    return path, np.load(models_dir / "data" / "labels.npy")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """scikit-learn's two photographs as a JPEG and a PNG of the `image_u8` model's size, 48x32."""
    folder = tmp_path_factory.mktemp("images")
    photos = images.photographs()
    files = [folder / "china.jpg", folder / "flower.png"]
    files[0].write_bytes(images.jpeg(photos["china"], 48, 32))
    files[1].write_bytes(images.png(photos["flower"], 48, 32))
    return files


@pytest.fixture(scope="module")
def answers(server, digits_batch: tuple[Path, np.ndarray], image_files: list[Path]) -> list[dict[str, Any]]:
    assert TFS_PYTHON.exists(), f"{TFS_PYTHON} is missing: `make test` installs it (`make tfs-client`)"
    commands = [
        f"predict digits x {digits_batch[0]}",
        "status versioned",
        "metadata versioned",
        f"predict nonexistent x {digits_batch[0]}",
        "status versioned 3",
        f"images image_u8 image {image_files[0]} {image_files[1]}",
        f"images resnet data {image_files[0]}",
    ]
    run = subprocess.run(
        [str(TFS_PYTHON), str(TFS_CLIENT), server.grpc_address, *commands],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout)
    assert len(results) == len(commands)
    return results


def test_predict_digits(answers: list[dict[str, Any]], digits_batch: tuple[Path, np.ndarray], server) -> None:
    images_path, labels = digits_batch
    output = answers[0]["outputs"]["probabilities"]
    assert answers[0]["outputs"].keys() == {"probabilities"}
    assert output["dtype"] == "DT_FLOAT"
    assert output["shape"] == [len(labels), 10]
    probabilities = np.array(output["values"], dtype=np.float32)
    classes = probabilities.argmax(axis=1)
    assert np.mean(classes == labels) >= 0.95
    # the same images through another client give the same classes
    expected = ovmsclient.make_grpc_client(server.grpc_address).predict({"x": np.load(images_path)}, "digits")
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))


def test_status(answers: list[dict[str, Any]]) -> None:
    assert answers[1] == {
        "versions": [{"version": v, "state": "AVAILABLE", "error_code": 0, "error_message": "OK"} for v in (1, 2)]
    }


def test_metadata(answers: list[dict[str, Any]]) -> None:
    """The client unpacks the Any itself, so the server must pack a real tensorflow.serving.SignatureDefMap."""
    assert answers[2]["model_spec"] == {"name": "versioned", "version": "2"}
    dims = [{"size": "-1"}, {"size": "4"}]
    assert answers[2]["signature_def"] == {
        "serving_default": {
            "inputs": {"x": {"name": "x", "dtype": "DT_FLOAT", "tensorShape": {"dim": dims}}},
            "outputs": {"y": {"name": "y", "dtype": "DT_FLOAT", "tensorShape": {"dim": dims}}},
            "methodName": "tensorflow/serving/predict",
        }
    }


def test_encoded_images_as_dt_string(answers: list[dict[str, Any]], image_files: list[Path], server) -> None:
    """tf.make_tensor_proto of the files' bytes: the pixels the server decoded are the client's own decoding,
    and resnet answers the resized image as ovmsclient's tensor of it."""
    pixels = answers[5]["outputs"]["pixels"]
    assert (pixels["dtype"], pixels["shape"]) == ("DT_UINT8", [2, 32, 48, 3])
    expected = [images.decoded(path.read_bytes()) for path in image_files]
    np.testing.assert_array_equal(np.array(pixels["values"], dtype=np.uint8), expected)
    tensor = images.nchw(images.resized(expected[0], 224, 224))
    from_tensor = ovmsclient.make_grpc_client(server.grpc_address).predict({"data": tensor}, "resnet")
    np.testing.assert_allclose(answers[6]["outputs"]["prob"]["values"], from_tensor, rtol=1e-4, atol=1e-6)


def test_errors(answers: list[dict[str, Any]]) -> None:
    assert answers[3] == {"error": {"code": "NOT_FOUND", "message": "Model with requested name is not found"}}
    assert answers[4] == {"error": {"code": "NOT_FOUND", "message": "Model with requested version is not found"}}
