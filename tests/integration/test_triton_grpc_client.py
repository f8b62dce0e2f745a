"""The official KServe v2 / Triton gRPC client (tritonclient.grpc, its sync, async_infer and grpc.aio
clients) against our server.

tritonclient pins a protobuf older than the server's, so it lives in its own venv (.venv-triton, `make
triton-client`) and runs as a subprocess: one run executes every command and prints their answers as JSON
(tests/clients/triton_grpc_client.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import ovmsclient
import pytest
from google.protobuf import descriptor_pb2

from api.protos import grpc_service_pb2, model_config_pb2
from tests.support import images
from tests.support.types_model import TYPES_MODEL_INPUTS, extremes

REPO = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
TRITON_CLIENT = REPO / "tests" / "clients" / "triton_grpc_client.py"

VERSIONED_X = np.array([[1.0, 2.0, -3.0, 0.5]], dtype=np.float32)
PHOTOS = images.photographs()
ENCODED_IMAGES = [images.jpeg(PHOTOS["china"], 48, 32), images.png(PHOTOS["flower"], 48, 32)]  # image_u8's size


@pytest.fixture(scope="module")
def data(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The inputs the client sends, one .npz per request (array name = input name)."""
    directory = tmp_path_factory.mktemp("triton")
    arrays = {
        "digits": {"x": np.load(models_dir / "data" / "imgs.npy")},
        "types": {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()},
        "versioned": {"x": VERSIONED_X},
        "multi": {"a": np.array([[1, 2]], np.float32), "b": np.array([[3, 4]], np.float32)},
        "bytes": {"x": np.array([b"\x89PNG", b"jpeg"])},  # fixed-width bytes: the client sends them as BYTES
        "resnet": {"data": np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)},
        "images": {"image": np.array(ENCODED_IMAGES)},
    }
    paths = {}
    for name, inputs in arrays.items():
        paths[name] = directory / f"{name}.npz"
        np.savez(paths[name], **inputs)
    return paths


COMMANDS = {
    "live": {"op": "live"},
    "ready": {"op": "ready"},
    "model_ready": {"op": "model_ready", "model": "digits"},
    "model_ready unknown": {"op": "model_ready", "model": "nonexistent"},
    "server_metadata": {"op": "server_metadata"},
    "metadata": {"op": "metadata", "model": "versioned"},
    "config": {"op": "config", "model": "digits"},
    "index": {"op": "index"},
    "load": {"op": "load", "model": "digits"},
    "load unknown": {"op": "load", "model": "nonexistent"},
    "unload": {"op": "unload", "model": "digits"},
    "infer digits": {"op": "infer", "model": "digits", "inputs": "digits"},
    "infer types": {"op": "infer", "model": "types", "inputs": "types"},
    "infer version and id": {"op": "infer", "model": "versioned", "inputs": "versioned", "version": "1", "id": "r-1"},
    "infer outputs": {"op": "infer", "model": "multi", "inputs": "multi", "outputs": ["product"]},
    "infer unknown model": {"op": "infer", "model": "nonexistent", "inputs": "versioned"},
    "infer bytes": {"op": "infer", "model": "digits", "inputs": "bytes"},
    "infer images": {"op": "infer", "model": "image_u8", "inputs": "images"},
    "infer timeout": {"op": "infer", "model": "resnet", "inputs": "resnet", "timeout_us": 1},
    "async_infer": {"op": "async_infer", "model": "versioned", "inputs": "versioned"},
    "aio": {"op": "aio", "model": "versioned", "inputs": "versioned"},
    "descriptors": {"op": "descriptors"},
}


@pytest.fixture(scope="module")
def answers(server, data: dict[str, Path]) -> dict[str, Any]:
    assert TRITON_PYTHON.exists(), f"{TRITON_PYTHON} is missing: `make test` installs it (`make triton-client`)"
    commands = [
        json.dumps({**command, "inputs": str(data[command["inputs"]])} if "inputs" in command else command)
        for command in COMMANDS.values()
    ]
    run = subprocess.run(
        [str(TRITON_PYTHON), str(TRITON_CLIENT), server.grpc_address, *commands],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout)
    assert len(results) == len(COMMANDS)
    return dict(zip(COMMANDS, results, strict=True))


def error(status: str, message: str) -> dict[str, Any]:
    return {"error": {"status": f"StatusCode.{status}", "message": message}}


def test_health(answers: dict[str, Any]) -> None:
    assert answers["live"] == {"live": True}
    assert answers["ready"] == {"ready": True}
    assert answers["model_ready"] == {"ready": True}
    assert answers["model_ready unknown"] == {"ready": False}


def test_metadata_and_config(answers: dict[str, Any]) -> None:
    assert answers["server_metadata"]["name"] == "ovms-celery"
    extensions = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]
    assert answers["server_metadata"]["extensions"] == extensions
    tensor = {"datatype": "FP32", "shape": ["-1", "4"]}  # MessageToJson writes int64 as strings
    assert answers["metadata"] == {
        "name": "versioned",
        "versions": ["1", "2"],
        "platform": "OpenVINO",
        "inputs": [{"name": "x", **tensor}],
        "outputs": [{"name": "y", **tensor}],
    }
    assert answers["config"] == {
        "config": {
            "name": "digits",
            "platform": "OpenVINO",
            "backend": "openvino",
            "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "64"]}],
            "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["-1", "10"]}],
        }
    }


def test_repository(answers: dict[str, Any]) -> None:
    index = {(m["name"], m.get("version")): m["state"] for m in answers["index"]["models"]}
    assert index[("digits", "1")] == index[("versioned", "2")] == "READY"
    assert answers["load"] == {"loaded": "digits"}
    assert answers["load unknown"] == error(
        "NOT_FOUND", "Model nonexistent is not in the configuration: add it to config.json, then load it"
    )
    assert answers["unload"]["error"]["status"] == "StatusCode.UNIMPLEMENTED"
    assert "remove it from config.json" in answers["unload"]["error"]["message"]


def test_infer_digits_as_tf_serving_answers(answers: dict[str, Any], data: dict[str, Path], models_dir: Path, server):
    output = answers["infer digits"]["outputs"]["probabilities"]
    labels = np.load(models_dir / "data" / "labels.npy")
    assert (output["datatype"], output["shape"]) == ("FP32", [len(labels), 10])
    probabilities = np.array(output["values"], dtype=np.float32)
    assert np.mean(probabilities.argmax(axis=1) == labels) >= 0.95
    images = np.load(data["digits"])["x"]
    tf_serving = ovmsclient.make_grpc_client(server.grpc_address).predict({"x": images}, "digits")
    np.testing.assert_array_equal(probabilities, tf_serving)


def test_infer_every_datatype_of_types(answers: dict[str, Any]) -> None:
    outputs = answers["infer types"]["outputs"]
    datatypes = {"f16": "FP16", "i8": "INT8", "u8": "UINT8", "i16": "INT16", "i32": "INT32", "i64": "INT64"}
    for name, dtype in TYPES_MODEL_INPUTS.items():
        sent = extremes(dtype)
        assert outputs[f"{name}_out"]["datatype"] == datatypes.get(name, "BOOL")
        np.testing.assert_array_equal(np.array(outputs[f"{name}_out"]["values"], dtype=dtype), sent, err_msg=name)


def test_infer_images_as_bytes_decoded_as_a_client_decodes_them(answers: dict[str, Any]) -> None:
    """A JPEG and a PNG as one BYTES tensor of 2 elements, decoded on the worker into image_u8's NHWC U8
    pixels: exactly what OpenCV gives the client for the same bytes."""
    pixels = answers["infer images"]["outputs"]["pixels"]
    assert (pixels["datatype"], pixels["shape"]) == ("UINT8", [2, 32, 48, 3])
    expected = np.stack([images.decoded(data) for data in ENCODED_IMAGES])
    np.testing.assert_array_equal(np.array(pixels["values"], dtype=np.uint8), expected)


def test_infer_options(answers: dict[str, Any]) -> None:
    pinned = answers["infer version and id"]
    assert (pinned["model_version"], pinned["id"]) == ("1", "r-1")
    np.testing.assert_array_equal(pinned["outputs"]["y"]["values"], VERSIONED_X + 1)
    assert list(answers["infer outputs"]["outputs"]) == ["product"]
    np.testing.assert_array_equal(answers["infer outputs"]["outputs"]["product"]["values"], [[3, 8]])


def test_infer_errors(answers: dict[str, Any]) -> None:
    assert answers["infer unknown model"] == error("NOT_FOUND", "Model with requested name is not found")
    # BYTES serialized by the client (4-byte length prefixes) reach validation: digits takes no images
    assert answers["infer bytes"] == error(
        "INVALID_ARGUMENT",
        "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input of "
        "1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,64)",
    )
    assert answers["infer timeout"] == error(
        "DEADLINE_EXCEEDED", "Deadline exceeded while waiting for the inference result"
    )


def test_async_and_aio_clients(answers: dict[str, Any]) -> None:
    np.testing.assert_array_equal(answers["async_infer"]["outputs"]["y"]["values"], VERSIONED_X * 2)
    aio = answers["aio"]
    assert (aio["live"], aio["ready"], aio["model_ready"]) == (True, True, True)
    assert aio["metadata"]["versions"] == ["1", "2"]
    assert aio["infer"]["model_version"] == "2"
    np.testing.assert_array_equal(aio["infer"]["outputs"]["y"]["values"], VERSIONED_X * 2)


def test_protos_match_the_clients(answers: dict[str, Any]) -> None:
    """Every message, field and enum value the server declares has the client's number, type and label."""
    theirs = answers["descriptors"]
    checked = 0
    for module in (grpc_service_pb2, model_config_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        ours: dict[str, dict[str, list]] = {}

        def walk(prefix: str, message: descriptor_pb2.DescriptorProto, ours=ours) -> None:
            name = f"{prefix}.{message.name}"
            ours[name] = {f.name: [f.number, f.type, f.label, f.type_name] for f in message.field}
            for nested in message.nested_type:
                walk(name, nested)

        for message in proto.message_type:
            walk(proto.package, message)
        for enum in proto.enum_type:
            ours[f"{proto.package}.{enum.name}"] = {value.name: [value.number] for value in enum.value}
        for name, fields in ours.items():
            assert name in theirs, name
            for field, description in fields.items():
                assert theirs[name].get(field) == description, f"{name}.{field}"
                checked += 1
    assert checked > 150
