"""The gRPC frontend as third-party clients see it: ovmsclient, and raw TensorFlow Serving protos.

The raw requests are built with ovmsclient's bundled protos (not the server's own), so every test
here goes through a client implementation the server did not write.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import ovmsclient
import pytest
from ovmsclient.tfs_compat.grpc.serving_client import GrpcClient
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tests.support.types_model import TYPES_MODEL_INPUTS, extremes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

# TensorFlow DataType -> how its values are stored in tensor_content.
NUMPY_TYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_BOOL: np.bool_,
}
TF_TYPES = {np.dtype(numpy_type): tf_type for tf_type, numpy_type in NUMPY_TYPES.items()}

RESNET_SHAPE = (1, 3, 224, 224)


class Stubs:
    """Raw TensorFlow Serving stubs on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def client(server) -> GrpcClient:
    return ovmsclient.make_grpc_client(server.grpc_address)


@pytest.fixture(scope="module")
def stubs(server) -> Iterator[Stubs]:
    channel = grpc.insecure_channel(server.grpc_address)
    yield Stubs(channel)
    channel.close()


@pytest.fixture(scope="module")
def digits_data(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(models_dir / "data" / "imgs.npy"), np.load(models_dir / "data" / "labels.npy")


# --------------------------------------------------------------------------- helpers


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])


def content_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """The seed's encoding: raw little-endian bytes in tensor_content."""
    return tensor_pb2.TensorProto(
        dtype=TF_TYPES[array.dtype], tensor_shape=shape_proto(array.shape), tensor_content=array.tobytes()
    )


def typed_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """TensorFlow's own encoding for small tensors: values in the *_val field of the dtype."""
    proto = tensor_pb2.TensorProto(dtype=TF_TYPES[array.dtype], tensor_shape=shape_proto(array.shape))
    flat = array.ravel()
    if array.dtype == np.float16:
        proto.half_val.extend(flat.view(np.uint16).tolist())  # half_val carries the raw 16-bit patterns
    elif array.dtype == np.float32:
        proto.float_val.extend(flat.tolist())
    elif array.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif array.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    else:
        proto.int_val.extend(flat.tolist())
    return proto


def raw_tensor(tf_type: int, shape: tuple[int, ...], **fields: object) -> tensor_pb2.TensorProto:
    """A tensor assembled field by field (no values at all unless given), to build malformed ones."""
    return tensor_pb2.TensorProto(dtype=tf_type, tensor_shape=shape_proto(shape), **fields)


def predict_request(
    model: str,
    inputs: dict[str, tensor_pb2.TensorProto],
    version: int | None = None,
    output_filter: tuple[str, ...] = (),
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(inputs=inputs, output_filter=list(output_filter))
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def decode(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """An output tensor; the server must answer in tensor_content, like the seed."""
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    assert proto.tensor_content or 0 in shape, "output values are not in tensor_content"
    return np.frombuffer(proto.tensor_content, dtype=NUMPY_TYPES[proto.dtype]).reshape(shape)


def outputs(response: predict_pb2.PredictResponse) -> dict[str, np.ndarray]:
    return {name: decode(proto) for name, proto in response.outputs.items()}


def rpc_error(method: grpc.UnaryUnaryMultiCallable, request: object, timeout: float = 30) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=timeout)
    return caught.value


def assert_rpc_error(
    method: grpc.UnaryUnaryMultiCallable, request: object, code: grpc.StatusCode, message: str
) -> None:
    error = rpc_error(method, request)
    assert (error.code(), error.details()) == (code, message)


def resnet_image(seed: int = 0, shape: tuple[int, ...] = RESNET_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def metadata_request(
    model: str, fields: list[str], version: int | None = None
) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


def status_request(model: str, version: int | None = None) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    return request


# --------------------------------------------------------------------------- digits


def test_digits_predict_tensor_content(stubs: Stubs, client, digits_data) -> None:
    images, _ = digits_data
    batch = images[:5]
    response = stubs.prediction.Predict(predict_request("digits", {"x": content_tensor(batch)}), timeout=30)

    assert response.model_spec.name == "digits"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["probabilities"]
    assert response.outputs["probabilities"].dtype == types_pb2.DT_FLOAT
    probabilities = outputs(response)["probabilities"]
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    # ovmsclient sends the same tensor_content request and must get the same answer
    np.testing.assert_allclose(client.predict({"x": batch}, "digits"), probabilities, atol=1e-6)


def test_digits_accuracy_on_held_out_set(client, digits_data) -> None:
    images, labels = digits_data
    predicted = [client.predict({"x": batch}, "digits").argmax(axis=1) for batch in np.array_split(images, 4)]
    accuracy = float(np.mean(np.concatenate(predicted) == labels))
    assert len(labels) > 400
    assert accuracy >= 0.95


def test_float_val_input(stubs: Stubs) -> None:
    x = np.array([[1.5, -2.0, 0.0, 8.25]], dtype=np.float32)
    response = stubs.prediction.Predict(predict_request("versioned", {"x": typed_tensor(x)}), timeout=30)
    np.testing.assert_array_equal(outputs(response)["y"], x * 2)


# --------------------------------------------------------------------------- element types


@pytest.mark.parametrize("encode", [content_tensor, typed_tensor], ids=["tensor_content", "typed_val"])
def test_every_element_type_passes_through(stubs: Stubs, encode) -> None:
    inputs = {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()}
    response = stubs.prediction.Predict(
        predict_request("types", {name: encode(array) for name, array in inputs.items()}), timeout=30
    )

    assert sorted(response.outputs) == sorted(f"{name}_out" for name in inputs)
    for name, sent in inputs.items():
        proto = response.outputs[f"{name}_out"]
        assert proto.dtype == TF_TYPES[sent.dtype], name
        received = decode(proto)
        assert received.dtype == sent.dtype, name
        np.testing.assert_array_equal(received, sent, err_msg=name)


@pytest.mark.parametrize(
    ("name", "tensor", "message"),
    [
        ("u8", raw_tensor(types_pb2.DT_UINT8, (2, 2), int_val=[300, 0, 1, 2]), "Actual: values out of range"),
        ("i8", raw_tensor(types_pb2.DT_INT8, (2, 2), int_val=[0, -129, 1, 2]), "Actual: values out of range"),
        # the precision check comes first, whatever the values
        ("u8", raw_tensor(types_pb2.DT_INT16, (2, 2), int_val=[300, 0, 1, 2]), "Actual: I16"),
    ],
)
def test_typed_values_out_of_range(stubs: Stubs, name: str, tensor: tensor_pb2.TensorProto, message: str) -> None:
    """int_val is 32-bit: values that do not fit the tensor's type are rejected, not wrapped (300 is no 44)."""
    inputs = {name: typed_tensor(extremes(dtype)) for name, dtype in TYPES_MODEL_INPUTS.items()}
    inputs[name] = tensor
    expected = f"Invalid input precision - Expected: {name.upper()}; {message}"
    assert_rpc_error(stubs.prediction.Predict, predict_request("types", inputs), INVALID, expected)


@pytest.mark.parametrize("encode", [content_tensor, typed_tensor], ids=["tensor_content", "typed_val"])
def test_i64_values_beyond_what_openvino_computes_are_invalid(stubs: Stubs, encode) -> None:
    """The CPU plugin runs I64 as 32-bit integers: [[2**40+5, -2**33]] used to come back [[5, 0]]."""
    inputs = {name: encode(extremes(dtype)) for name, dtype in TYPES_MODEL_INPUTS.items()}
    inputs["i64"] = encode(np.array([[2**40 + 5, -(2**33)], [0, 1]], dtype=np.int64))
    expected = (
        f"Invalid input values - I64 input i64 holds {2**40 + 5}, outside -2147483648..2147483647: "
        "OpenVINO computes I64 as 32-bit integers"
    )
    assert_rpc_error(stubs.prediction.Predict, predict_request("types", inputs), INVALID, expected)


def test_half_val_out_of_range(stubs: Stubs) -> None:
    inputs = {name: typed_tensor(extremes(dtype)) for name, dtype in TYPES_MODEL_INPUTS.items()}
    inputs["f16"] = raw_tensor(types_pb2.DT_HALF, (2, 2), half_val=[70000, 0, 0, 0])
    message = "Invalid tensor proto - half_val holds values out of range for FP16"
    assert_rpc_error(stubs.prediction.Predict, predict_request("types", inputs), INVALID, message)


def test_types_model_through_ovmsclient(client) -> None:
    inputs = {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()}
    result = client.predict(inputs, "types")
    for name, sent in inputs.items():
        assert result[f"{name}_out"].dtype == sent.dtype, name
        np.testing.assert_array_equal(result[f"{name}_out"], sent, err_msg=name)


# --------------------------------------------------------------------------- versions


def test_versioned_default_is_highest_version(stubs: Stubs, client) -> None:
    x = np.array([[1.0, 2.0, -3.0, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(client.predict({"x": x}, "versioned"), x * 2)
    np.testing.assert_array_equal(client.predict({"x": x}, "versioned", model_version=2), x * 2)
    np.testing.assert_array_equal(client.predict({"x": x}, "versioned", model_version=1), x + 1)
    response = stubs.prediction.Predict(predict_request("versioned", {"x": content_tensor(x)}), timeout=30)
    assert response.model_spec.version.value == 2
    response = stubs.prediction.Predict(predict_request("versioned", {"x": content_tensor(x)}, version=1), timeout=30)
    assert response.model_spec.version.value == 1


def test_unknown_version_and_model(stubs: Stubs, client) -> None:
    x = content_tensor(np.ones((1, 4), dtype=np.float32))
    version_missing = "Model with requested version is not found"
    name_missing = "Model with requested name is not found"
    assert_rpc_error(stubs.prediction.Predict, predict_request("versioned", {"x": x}, 3), NOT_FOUND, version_missing)
    assert_rpc_error(stubs.prediction.Predict, predict_request("nonexistent", {"x": x}), NOT_FOUND, name_missing)
    assert_rpc_error(stubs.model.GetModelStatus, status_request("versioned", 3), NOT_FOUND, version_missing)
    assert_rpc_error(stubs.model.GetModelStatus, status_request("nonexistent"), NOT_FOUND, name_missing)
    metadata = stubs.prediction.GetModelMetadata
    assert_rpc_error(metadata, metadata_request("versioned", ["signature_def"], 3), NOT_FOUND, version_missing)
    assert_rpc_error(metadata, metadata_request("nonexistent", ["signature_def"]), NOT_FOUND, name_missing)

    with pytest.raises(ovmsclient.ModelNotFoundError, match=version_missing):
        client.predict({"x": np.ones((1, 4), dtype=np.float32)}, "versioned", model_version=3)
    with pytest.raises(ovmsclient.ModelNotFoundError, match=name_missing):
        client.get_model_status("nonexistent")


def test_model_status(stubs: Stubs, client) -> None:
    available = {"state": "AVAILABLE", "error_code": 0, "error_message": "OK"}
    assert client.get_model_status("versioned") == {1: available, 2: available}
    assert client.get_model_status("versioned", model_version=1) == {1: available}
    assert client.get_model_status("digits") == {1: available}

    response = stubs.model.GetModelStatus(status_request("versioned"), timeout=30)
    assert [s.version for s in response.model_version_status] == [1, 2]
    for status in response.model_version_status:
        assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert status.status.error_code == 0  # tensorflow.error.OK


def test_model_metadata_signature(stubs: Stubs, client) -> None:
    response = stubs.prediction.GetModelMetadata(metadata_request("versioned", ["signature_def"]), timeout=30)
    assert response.model_spec.name == "versioned"
    assert response.model_spec.version.value == 2
    assert list(response.metadata) == ["signature_def"]
    packed = response.metadata["signature_def"]
    # ovmsclient renames its proto package, so Any.Unpack() would refuse TF Serving's real type name
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    assert list(signatures.signature_def) == ["serving_default"]
    signature = signatures.signature_def["serving_default"]
    for infos, name in ((signature.inputs, "x"), (signature.outputs, "y")):
        assert list(infos) == [name]
        assert infos[name].name == name
        assert infos[name].dtype == types_pb2.DT_FLOAT
        assert [d.size for d in infos[name].tensor_shape.dim] == [-1, 4]

    expected = {
        "model_version": 1,
        "inputs": {"x": {"shape": [-1, 4], "dtype": "DT_FLOAT"}},
        "outputs": {"y": {"shape": [-1, 4], "dtype": "DT_FLOAT"}},
    }
    assert client.get_model_metadata("versioned", model_version=1) == expected
    assert client.get_model_metadata("resnet") == {
        "model_version": 1,
        "inputs": {"data": {"shape": list(RESNET_SHAPE), "dtype": "DT_FLOAT"}},
        "outputs": {"prob": {"shape": [1, 1000], "dtype": "DT_FLOAT"}},
    }


@pytest.mark.parametrize("fields", [[], ["inputs"], ["signature_def", "signature_def"]])
def test_metadata_field_must_be_signature_def(stubs: Stubs, fields: list[str]) -> None:
    request = metadata_request("versioned", fields)
    assert_rpc_error(stubs.prediction.GetModelMetadata, request, INVALID, "Invalid signature name")


# --------------------------------------------------------------------------- mapping, multi, onnx


def test_mapped_names(stubs: Stubs, client) -> None:
    assert client.get_model_metadata("mapped") == {
        "model_version": 1,
        "inputs": {"in": {"shape": [-1, 3], "dtype": "DT_FLOAT"}},
        "outputs": {"out": {"shape": [-1, 3], "dtype": "DT_FLOAT"}},
    }
    x = np.array([[1.0, -2.0, 0.5], [4.0, 0.0, 1.0]], dtype=np.float32)
    response = stubs.prediction.Predict(predict_request("mapped", {"in": content_tensor(x)}), timeout=30)
    assert list(response.outputs) == ["out"]
    np.testing.assert_array_equal(outputs(response)["out"], x * 3)

    request = predict_request("mapped", {"input_tensor": content_tensor(x)})
    assert_rpc_error(
        stubs.prediction.Predict, request, INVALID, "Missing input with specific name - Required input: in"
    )


def test_multi_input_multi_output(stubs: Stubs, client) -> None:
    a = np.array([[1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    b = np.array([[5.0, 6.0], [0.5, 2.0]], dtype=np.float32)
    result = client.predict({"a": a, "b": b}, "multi")
    assert sorted(result) == ["product", "sum"]
    np.testing.assert_array_equal(result["sum"], a + b)
    np.testing.assert_array_equal(result["product"], a * b)

    request = predict_request("multi", {"a": content_tensor(a), "b": content_tensor(b)}, output_filter=("product",))
    response = stubs.prediction.Predict(request, timeout=30)
    assert list(response.outputs) == ["product"]
    np.testing.assert_array_equal(outputs(response)["product"], a * b)


def test_onnx_model(client) -> None:
    x = np.array([[1.0, 2.0, 3.0], [-10.0, 0.0, 0.25], [7.0, 8.0, 9.0]], dtype=np.float32)
    np.testing.assert_array_equal(client.predict({"x": x}, "onnx_add"), x + 10)
    assert client.get_model_metadata("onnx_add")["inputs"] == {"x": {"shape": [-1, 3], "dtype": "DT_FLOAT"}}


# --------------------------------------------------------------------------- resnet and validation


def test_resnet_predict(client) -> None:
    probabilities = client.predict({"data": resnet_image()}, "resnet")
    assert probabilities.shape == (1, 1000)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-3)


def float_input(shape: tuple[int, ...]) -> tensor_pb2.TensorProto:
    return content_tensor(np.zeros(shape, dtype=np.float32))


VALIDATION_CASES = {
    "input count": (
        "digits",
        {"x": float_input((1, 64)), "extra": float_input((1, 64))},
        "Invalid number of inputs - Expected: 1; Actual: 2",
    ),
    "input name": (
        "resnet",
        {"image": float_input(RESNET_SHAPE)},
        "Missing input with specific name - Required input: data",
    ),
    "precision": (
        "resnet",
        {"data": content_tensor(np.zeros(RESNET_SHAPE, dtype=np.int32))},
        "Invalid input precision - Expected: FP32; Actual: I32",
    ),
    "dimensions": (
        "resnet",
        {"data": float_input((3, 224, 224))},
        "Invalid number of shape dimensions - Expected: (1,3,224,224); Actual: (3,224,224)",
    ),
    "batch size": (
        "resnet",
        {"data": float_input((8, 3, 224, 224))},
        "Invalid input batch size - Expected: 1; Actual: 8",
    ),
    "shape": (
        "resnet",
        {"data": float_input((1, 3, 300, 300))},
        "Invalid input shape - Expected: (1,3,224,224); Actual: (1,3,300,300)",
    ),
    "content size": (
        "resnet",
        {"data": raw_tensor(types_pb2.DT_FLOAT, RESNET_SHAPE)},
        "Invalid content size of tensor proto - Expected: 602112 bytes; Actual: 0 bytes",
    ),
    "content size, short": (
        "resnet",
        {"data": raw_tensor(types_pb2.DT_FLOAT, RESNET_SHAPE, tensor_content=bytes(1000))},
        "Invalid content size of tensor proto - Expected: 602112 bytes; Actual: 1000 bytes",
    ),
    "typed values, wrong count": (
        "digits",
        {"x": raw_tensor(types_pb2.DT_FLOAT, (1, 64), float_val=[1, 2])},
        "Invalid content size of tensor proto - Expected: 256 bytes; Actual: 8 bytes",
    ),
    # Several faults at once: the seed reports the first one in its order of checks.
    "count before name": (
        "resnet",
        {"a": float_input(RESNET_SHAPE), "b": float_input(RESNET_SHAPE)},
        "Invalid number of inputs - Expected: 1; Actual: 2",
    ),
    "precision before shape": (
        "resnet",
        {"data": content_tensor(np.zeros((2, 3, 10, 10), dtype=np.int32))},
        "Invalid input precision - Expected: FP32; Actual: I32",
    ),
    "dimensions before batch": (
        "resnet",
        {"data": raw_tensor(types_pb2.DT_FLOAT, (8, 3, 224))},
        "Invalid number of shape dimensions - Expected: (1,3,224,224); Actual: (8,3,224)",
    ),
    "batch before shape": (
        "resnet",
        {"data": raw_tensor(types_pb2.DT_FLOAT, (8, 3, 300, 300))},
        "Invalid input batch size - Expected: 1; Actual: 8",
    ),
    "shape before content": (
        "resnet",
        {"data": raw_tensor(types_pb2.DT_FLOAT, (1, 3, 300, 300))},
        "Invalid input shape - Expected: (1,3,224,224); Actual: (1,3,300,300)",
    ),
}


@pytest.mark.parametrize(("model", "inputs", "message"), VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys())
def test_invalid_argument_messages(stubs: Stubs, model: str, inputs: dict, message: str) -> None:
    assert_rpc_error(stubs.prediction.Predict, predict_request(model, inputs), INVALID, message)


def test_ovmsclient_reports_invalid_input(client) -> None:
    with pytest.raises(ovmsclient.InvalidInputError, match=r"Invalid input precision - Expected: FP32; Actual: I32"):
        client.predict({"x": np.ones((1, 64), dtype=np.int32)}, "digits")


# --------------------------------------------------------------------------- transport


def test_worker_trailing_metadata(stubs: Stubs, server) -> None:
    x = content_tensor(np.ones((1, 4), dtype=np.float32))
    _, call = stubs.prediction.Predict.with_call(predict_request("versioned", {"x": x}), timeout=30)
    trailers = dict(call.trailing_metadata())
    worker = trailers.get("ovms-worker")
    assert worker, f"no ovms-worker trailer in {trailers}"
    assert f"Worker {worker} serves" in server.log()


@pytest.mark.parametrize("timeout_s", [0.001, 0.01, 0.05])
def test_short_deadline_never_hangs(stubs: Stubs, timeout_s: float) -> None:
    """A deadline too short for resnet ends promptly: either an answer or DEADLINE_EXCEEDED, nothing else."""
    request = predict_request("resnet", {"data": content_tensor(resnet_image(1))})
    started = time.monotonic()
    try:
        response = stubs.prediction.Predict(request, timeout=timeout_s)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error.details()
    else:
        assert decode(response.outputs["prob"]).shape == (1, 1000)
    assert time.monotonic() - started < 5

    # the server is still healthy afterwards
    response = stubs.prediction.Predict(request, timeout=30)
    assert decode(response.outputs["prob"]).shape == (1, 1000)
