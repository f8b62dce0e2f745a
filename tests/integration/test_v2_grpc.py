"""The KServe v2 gRPC frontend (inference.GRPCInferenceService) through stubs generated from the server's
protos, against the session's server: every RPC, every datatype, versions, deadlines, errors and what a
hostile client may send. The official client (tritonclient.grpc) has its own module:
test_triton_grpc_client.py.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import ovmsclient
import pytest
import requests
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from api.protos import grpc_service_pb2 as pb
from api.protos import grpc_service_pb2_grpc
from tests.support.stack import OvmsProcess, start_ovms
from tests.support.types_model import TYPES_MODEL_INPUTS, extremes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
TIMEOUT_S = 30

DATATYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
NUMPY_TYPES = {datatype: dtype for dtype, datatype in DATATYPES.items()}
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


@pytest.fixture(scope="module")
def stub(server: OvmsProcess) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def digits_data(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(models_dir / "data" / "imgs.npy"), np.load(models_dir / "data" / "labels.npy")


# --------------------------------------------------------------------------- helpers


def infer_request(
    model: str,
    inputs: dict[str, np.ndarray],
    raw: bool = True,
    version: str = "",
    request_id: str = "",
    outputs: tuple[str, ...] = (),
) -> pb.ModelInferRequest:
    """A request with the inputs raw (raw_input_contents) or typed (contents), as a v2 client builds it."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, array in inputs.items():
        tensor = request.inputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
        if raw:
            request.raw_input_contents.append(array.tobytes())
        elif tensor.datatype in CONTENTS_FIELDS:  # FP16 has no contents field: it is sent raw only
            getattr(tensor.contents, CONTENTS_FIELDS[tensor.datatype]).extend(array.ravel().tolist())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The answer's outputs; the server answers in raw_output_contents, one per output, as Triton does."""
    assert len(response.raw_output_contents) == len(response.outputs)
    return {
        tensor.name: np.frombuffer(raw, dtype=NUMPY_TYPES[tensor.datatype]).reshape(tuple(tensor.shape))
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def rpc_error(method: grpc.UnaryUnaryMultiCallable, request: object, timeout: float = TIMEOUT_S) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=timeout)
    return caught.value


def assert_rpc_error(
    method: grpc.UnaryUnaryMultiCallable, request: object, code: grpc.StatusCode, message: str
) -> None:
    error = rpc_error(method, request)
    assert (error.code(), error.details()) == (code, message)


def resnet_image() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)


def with_parameter(request: pb.ModelInferRequest, name: str, **value: object) -> pb.ModelInferRequest:
    request.parameters[name].CopyFrom(pb.InferParameter(**value))
    return request


# --------------------------------------------------------------------------- server


def test_server_live_ready_and_metadata(stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=TIMEOUT_S)
    assert metadata.name == "ovms-celery"
    assert metadata.version == importlib.metadata.version("ovms-celery")
    assert list(metadata.extensions) == ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]


def test_server_ready_is_what_rest_readiness_says(stub, server: OvmsProcess) -> None:
    rest = requests.get(f"{server.rest_url}/v1/health/ready", timeout=TIMEOUT_S)
    assert rest.status_code == 200
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready


def test_grpc_health_reports_the_v2_service(server: OvmsProcess) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        request = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- inference


def test_digits_raw_matches_tf_serving(stub, server: OvmsProcess, digits_data) -> None:
    images, labels = digits_data
    response = stub.ModelInfer(infer_request("digits", {"x": images}), timeout=TIMEOUT_S)
    assert (response.model_name, response.model_version) == ("digits", "1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("probabilities", "FP32", [len(images), 10])
    ]
    probabilities = decode_outputs(response)["probabilities"]
    assert np.mean(probabilities.argmax(axis=1) == labels) >= 0.95
    tf_serving = ovmsclient.make_grpc_client(server.grpc_address).predict({"x": images}, "digits")
    np.testing.assert_array_equal(probabilities, tf_serving)


def test_digits_typed_contents_answer_as_raw(stub, digits_data) -> None:
    images = digits_data[0][:16]
    raw = decode_outputs(stub.ModelInfer(infer_request("digits", {"x": images}), timeout=TIMEOUT_S))
    typed = decode_outputs(stub.ModelInfer(infer_request("digits", {"x": images}, raw=False), timeout=TIMEOUT_S))
    np.testing.assert_array_equal(typed["probabilities"], raw["probabilities"])


def test_every_datatype_of_the_types_model_raw(stub) -> None:
    inputs = {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()}
    response = stub.ModelInfer(infer_request("types", inputs), timeout=TIMEOUT_S)
    received = decode_outputs(response)
    assert sorted(received) == sorted(f"{name}_out" for name in inputs)
    datatypes = {tensor.name: tensor.datatype for tensor in response.outputs}
    for name, sent in inputs.items():
        assert datatypes[f"{name}_out"] == DATATYPES[sent.dtype], name
        np.testing.assert_array_equal(received[f"{name}_out"], sent, err_msg=name)


def test_typed_contents_of_the_types_model(stub) -> None:
    """Every type but FP16 goes typed; FP16 has no contents field (the protocol sends it raw only), so a
    request with every input typed is refused naming that, and all-raw is the way (test above)."""
    inputs = {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()}
    message = (
        "Invalid contents of input f16 - FP16 has no typed contents field in the protocol: "
        "send it in raw_input_contents"
    )
    assert_rpc_error(stub.ModelInfer, infer_request("types", inputs, raw=False), INVALID, message)


def test_values_beyond_what_openvino_computes_are_refused(stub) -> None:
    inputs = {name: extremes(dtype) for name, dtype in TYPES_MODEL_INPUTS.items()}
    inputs["i64"] = np.array([[2**40 + 5, 0], [0, 1]], dtype=np.int64)
    expected = (
        f"Invalid input values - I64 input i64 holds {2**40 + 5}, outside -2147483648..2147483647: "
        "OpenVINO computes I64 as 32-bit integers"
    )
    assert_rpc_error(stub.ModelInfer, infer_request("types", inputs), INVALID, expected)


def test_multi_model_and_output_selection(stub) -> None:
    a, b = np.array([[1, 2]], np.float32), np.array([[3, 4]], np.float32)
    everything = decode_outputs(stub.ModelInfer(infer_request("multi", {"a": a, "b": b}), timeout=TIMEOUT_S))
    np.testing.assert_array_equal(everything["sum"], a + b)
    np.testing.assert_array_equal(everything["product"], a * b)
    response = stub.ModelInfer(infer_request("multi", {"a": a, "b": b}, outputs=("product",)), timeout=TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["product"]
    np.testing.assert_array_equal(decode_outputs(response)["product"], a * b)
    response = stub.ModelInfer(infer_request("multi", {"a": a, "b": b}, outputs=("product", "sum")), timeout=TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["product", "sum"]  # in the order asked for


def test_mapped_and_onnx_models(stub) -> None:
    x = np.array([[1, 2, 3]], np.float32)
    mapped = decode_outputs(stub.ModelInfer(infer_request("mapped", {"in": x}), timeout=TIMEOUT_S))
    np.testing.assert_array_equal(mapped["out"], 3 * x)
    onnx = decode_outputs(stub.ModelInfer(infer_request("onnx_add", {"x": x}, raw=False), timeout=TIMEOUT_S))
    np.testing.assert_array_equal(onnx["y"], x + 10)


def test_request_id_is_echoed(stub) -> None:
    x = np.ones((1, 4), np.float32)
    response = stub.ModelInfer(infer_request("versioned", {"x": x}, request_id="req-7f3a"), timeout=TIMEOUT_S)
    assert response.id == "req-7f3a"
    assert stub.ModelInfer(infer_request("versioned", {"x": x}), timeout=TIMEOUT_S).id == ""


def test_worker_trailing_metadata(stub, server: OvmsProcess) -> None:
    request = infer_request("versioned", {"x": np.ones((1, 4), np.float32)})
    _, call = stub.ModelInfer.with_call(request, timeout=TIMEOUT_S)
    trailers = dict(call.trailing_metadata())
    assert f"Worker {trailers['ovms-worker']} serves" in server.log()
    assert int(trailers["ovms-batch-size"]) >= 1


def test_requests_count_under_the_v2_interface(stub, server: OvmsProcess) -> None:
    for _ in range(3):
        stub.ModelInfer(infer_request("versioned", {"x": np.ones((1, 4), np.float32)}, version="1"), timeout=TIMEOUT_S)
    stub.ModelReady(pb.ModelReadyRequest(name="no-such-model-7c1"), timeout=TIMEOUT_S)
    samples = {}
    for family in text_string_to_metric_families(requests.get(f"{server.rest_url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "ovms_requests_success_total" and sample.labels["interface"] == "v2-grpc":
                samples[sample.labels["name"], sample.labels["version"], sample.labels["method"]] = sample.value
    assert samples[("versioned", "1", "ModelInfer")] >= 3
    assert samples[("", "", "ModelReady")] >= 1  # a made-up name makes no series of its own
    assert not any(name == "no-such-model-7c1" for name, _, _ in samples)


# --------------------------------------------------------------------------- versions


def test_versions(stub) -> None:
    x = np.array([[1.0, 2.0, -3.0, 0.5]], dtype=np.float32)
    for version, expected, served in (("", x * 2, "2"), ("0", x * 2, "2"), ("2", x * 2, "2"), ("1", x + 1, "1")):
        response = stub.ModelInfer(infer_request("versioned", {"x": x}, version=version), timeout=TIMEOUT_S)
        assert response.model_version == served, version
        np.testing.assert_array_equal(decode_outputs(response)["y"], expected)
    request = infer_request("versioned", {"x": x}, version="3")
    assert_rpc_error(stub.ModelInfer, request, NOT_FOUND, "Model with requested version is not found")
    assert_rpc_error(
        stub.ModelInfer, infer_request("versioned", {"x": x}, version="v1"), INVALID, "Invalid version: v1"
    )
    request = infer_request("nonexistent", {"x": x})
    assert_rpc_error(stub.ModelInfer, request, NOT_FOUND, "Model with requested name is not found")


def test_model_ready(stub) -> None:
    def ready(name: str, version: str = "") -> bool:
        return stub.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=TIMEOUT_S).ready

    assert ready("digits")
    assert ready("versioned", "1") and ready("versioned", "2")
    assert not ready("versioned", "3")
    assert not ready("nonexistent")  # as Triton: false, not NOT_FOUND
    request = pb.ModelReadyRequest(name="digits", version="x" * 5000)
    assert_rpc_error(stub.ModelReady, request, INVALID, f"Invalid version: {'x' * 40}")


# --------------------------------------------------------------------------- metadata and configuration


def test_model_metadata(stub) -> None:
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="versioned"), timeout=TIMEOUT_S)
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("versioned", ["1", "2"], "OpenVINO")
    tensors = [(t.name, t.datatype, list(t.shape)) for t in (*metadata.inputs, *metadata.outputs)]
    assert tensors == [("x", "FP32", [-1, 4]), ("y", "FP32", [-1, 4])]
    mapped = stub.ModelMetadata(pb.ModelMetadataRequest(name="mapped", version="1"), timeout=TIMEOUT_S)
    assert [t.name for t in mapped.inputs] == ["in"] and [t.name for t in mapped.outputs] == ["out"]
    types = stub.ModelMetadata(pb.ModelMetadataRequest(name="types"), timeout=TIMEOUT_S)
    assert [t.datatype for t in types.inputs] == ["FP16", "INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL"]
    request = pb.ModelMetadataRequest(name="nonexistent")
    assert_rpc_error(stub.ModelMetadata, request, NOT_FOUND, "Model with requested name is not found")
    request = pb.ModelMetadataRequest(name="versioned", version="9")
    assert_rpc_error(stub.ModelMetadata, request, NOT_FOUND, "Model with requested version is not found")


def test_model_config(stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="digits"), timeout=TIMEOUT_S).config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "digits",
        "OpenVINO",
        "openvino",
        0,
    )
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", 11, [-1, 64])]  # TYPE_FP32
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("probabilities", 11, [-1, 10])]
    resnet = stub.ModelConfig(pb.ModelConfigRequest(name="resnet", version="1"), timeout=TIMEOUT_S).config
    assert list(resnet.input[0].dims) == [1, 3, 224, 224]
    types = stub.ModelConfig(pb.ModelConfigRequest(name="types"), timeout=TIMEOUT_S).config
    assert [i.data_type for i in types.input] == [10, 6, 2, 7, 8, 9, 1]  # TYPE_FP16, TYPE_INT8, ... TYPE_BOOL
    request = pb.ModelConfigRequest(name="nonexistent")
    assert_rpc_error(stub.ModelConfig, request, NOT_FOUND, "Model with requested name is not found")


# --------------------------------------------------------------------------- repository


def test_repository_index(stub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT_S)
    entries = {(m.name, m.version): (m.state, m.reason) for m in index.models}
    for name in ("digits", "resnet", "mapped", "multi", "onnx_add", "types"):
        assert entries[(name, "1")] == ("READY", "")
    assert entries[("versioned", "1")] == entries[("versioned", "2")] == ("READY", "")
    ready_only = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=TIMEOUT_S)
    assert all(m.state == "READY" for m in ready_only.models)


def test_repository_load_and_unload(stub) -> None:
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits"), timeout=120)
    assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=TIMEOUT_S).ready
    message = "Model nonexistent is not in the configuration: add it to config.json, then load it"
    request = pb.RepositoryModelLoadRequest(model_name="nonexistent")
    assert_rpc_error(stub.RepositoryModelLoad, request, NOT_FOUND, message)
    request = pb.RepositoryModelLoadRequest(model_name="digits")
    request.parameters["config"].string_param = '{"max_batch_size": 8}'
    message = (
        "Invalid load parameters (config): a model is loaded as config.json configures it; edit config.json, then load"
    )
    assert_rpc_error(stub.RepositoryModelLoad, request, INVALID, message)
    error = rpc_error(stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="digits"))
    assert error.code() == UNIMPLEMENTED
    assert error.details().startswith("Model digits cannot be unloaded on request: remove it from config.json")
    request = pb.RepositoryModelUnloadRequest(model_name="nonexistent")
    assert_rpc_error(stub.RepositoryModelUnload, request, NOT_FOUND, "Model with requested name is not found")
    assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=TIMEOUT_S).ready


UNSERVED = {
    "SystemSharedMemoryStatus": "System shared memory is not supported by this server: send tensors in the request",
    "SystemSharedMemoryRegister": "System shared memory is not supported by this server: send tensors in the request",
    "CudaSharedMemoryRegister": "CUDA shared memory is not supported by this server: send tensors in the request",
    "TraceSetting": "Tracing is not supported by this server: its Prometheus metrics time every request",
    "LogSettings": "Log settings are not changed at run time: start the server with --log_level",
}


@pytest.mark.parametrize(("rpc", "message"), UNSERVED.items(), ids=UNSERVED.keys())
def test_unserved_rpcs_say_why(stub, rpc: str, message: str) -> None:
    request = getattr(pb, f"{rpc}Request")()
    assert_rpc_error(getattr(stub, rpc), request, UNIMPLEMENTED, message)


def test_stream_infer_is_unimplemented(stub) -> None:
    request = infer_request("versioned", {"x": np.ones((1, 4), np.float32)})
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ModelStreamInfer(iter([request]), timeout=TIMEOUT_S))
    assert caught.value.code() == UNIMPLEMENTED
    assert caught.value.details().startswith("ModelStreamInfer is not supported by this server")


# --------------------------------------------------------------------------- deadlines


def test_timeout_parameter_bounds_the_request(stub) -> None:
    """1 µs: the server gives up at once, whatever the gRPC deadline (its own message, not grpc's)."""
    request = with_parameter(infer_request("resnet", {"data": resnet_image()}), "timeout", int64_param=1)
    message = "Deadline exceeded while waiting for the inference result"
    assert_rpc_error(stub.ModelInfer, request, grpc.StatusCode.DEADLINE_EXCEEDED, message)
    generous = with_parameter(infer_request("resnet", {"data": resnet_image()}), "timeout", int64_param=60_000_000)
    assert decode_outputs(stub.ModelInfer(generous, timeout=TIMEOUT_S))["prob"].shape == (1, 1000)


def test_deadline_wins_over_a_longer_timeout_parameter(stub) -> None:
    request = with_parameter(infer_request("resnet", {"data": resnet_image()}), "timeout", int64_param=60_000_000)
    error = rpc_error(stub.ModelInfer, request, timeout=0.005)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert decode_outputs(stub.ModelInfer(request, timeout=TIMEOUT_S))["prob"].shape == (1, 1000)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"string_param": "1000"}, "Invalid 'timeout' parameter: microseconds as an integer"),
        ({"bool_param": True}, "Invalid 'timeout' parameter: microseconds as an integer"),
        ({"int64_param": -5}, "Invalid 'timeout' parameter: -5 is outside 0..1000000000000 µs"),
    ],
)
def test_invalid_timeout_parameter(stub, value: dict, message: str) -> None:
    request = with_parameter(infer_request("versioned", {"x": np.ones((1, 4), np.float32)}), "timeout", **value)
    assert_rpc_error(stub.ModelInfer, request, INVALID, message)


def test_other_parameters_are_accepted(stub) -> None:
    request = infer_request("versioned", {"x": np.ones((1, 4), np.float32)})
    with_parameter(request, "priority", uint64_param=1)
    with_parameter(request, "client-tag", string_param="batch-7")
    request.inputs[0].parameters["layout"].string_param = "NC"
    assert stub.ModelInfer(request, timeout=TIMEOUT_S).model_version == "2"


# --------------------------------------------------------------------------- hostile input


def _digits_request(**overrides: object) -> pb.ModelInferRequest:
    return infer_request("digits", {"x": np.ones((1, 64), np.float32)}, **overrides)


def _raw_count_mismatch() -> pb.ModelInferRequest:
    request = infer_request("multi", {"a": np.ones((1, 2), np.float32), "b": np.ones((1, 2), np.float32)})
    del request.raw_input_contents[1]
    return request


def _raw_size(delta: int) -> pb.ModelInferRequest:
    request = _digits_request()
    request.raw_input_contents[0] = bytes(256 + delta)
    return request


def _mixed() -> pb.ModelInferRequest:
    request = _digits_request()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    return request


def _mixed_across_inputs() -> pb.ModelInferRequest:
    request = infer_request("multi", {"a": np.ones((1, 2), np.float32)})
    request.inputs.add(name="b", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    return request


def _wrong_contents() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 64]).contents.int_contents.extend(range(64))
    return request


def _shape(*shape: int, datatype: str = "FP32") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="x", datatype=datatype, shape=shape)
    return request


def _bytes_input(raw: bytes, shape: tuple[int, ...] = (2,)) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[raw])
    request.inputs.add(name="x", datatype="BYTES", shape=shape)
    return request


def _element(data: bytes, announced: int | None = None) -> bytes:
    return (len(data) if announced is None else announced).to_bytes(4, "little") + data


def _many_parameters() -> pb.ModelInferRequest:
    request = _digits_request()
    for index in range(10_000):
        request.parameters[f"p{index}"].int64_param = index
    return request


def _many_outputs() -> pb.ModelInferRequest:
    return _digits_request(outputs=tuple(f"out{index}" for index in range(5_000)))


def _long_unknown_outputs() -> pb.ModelInferRequest:
    return _digits_request(outputs=tuple(f"{index}-{'o' * 10_000}" for index in range(1_000)))


def _duplicate_input() -> pb.ModelInferRequest:
    request = infer_request("multi", {"a": np.ones((1, 2), np.float32)})
    request.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(bytes(8))
    return request


def _shared_memory_input() -> pb.ModelInferRequest:
    request = _shape(1, 64)
    request.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    return request


def _classification_output() -> pb.ModelInferRequest:
    request = _digits_request(outputs=("probabilities",))
    request.outputs[0].parameters["classification"].int64_param = 3
    return request


HOSTILE = {
    "raw entries != inputs": (
        _raw_count_mismatch,
        "Invalid raw_input_contents - 1 entries for 2 inputs: one per input, in the order of inputs, or none "
        "(then every input has typed contents)",
    ),
    "raw one byte short": (
        lambda: _raw_size(-1),
        "Invalid data size of input x: shape [1, 64] of FP32 takes 256 bytes; got 255",
    ),
    "raw one byte long": (
        lambda: _raw_size(1),
        "Invalid data size of input x: shape [1, 64] of FP32 takes 256 bytes; got 257",
    ),
    "typed beside raw": (
        _mixed,
        "Invalid contents of input x - typed contents beside raw_input_contents: send every input raw, "
        "or every input typed",
    ),
    "typed and raw across inputs": (
        _mixed_across_inputs,
        "Invalid raw_input_contents - 1 entries for 2 inputs: one per input, in the order of inputs, or none "
        "(then every input has typed contents)",
    ),
    "contents of another type": (
        _wrong_contents,
        "Invalid contents of input x - datatype FP32 takes fp32_contents, not int_contents",
    ),
    "negative dimension": (
        lambda: _shape(-1, 64),
        "Unable to parse 'shape' of input x: a list of at most 32 non-negative integers",
    ),
    "10^12 elements": (
        lambda: _shape(10**6, 10**6),
        "Invalid 'shape' of input x: [1000000, 1000000] exceeds 268435456 elements",
    ),
    "100,000 dimensions": (
        lambda: _shape(*([1] * 100_000)),
        "Unable to parse 'shape' of input x: a list of at most 32 non-negative integers",
    ),
    "unknown datatype": (
        lambda: _shape(1, 64, datatype="FP8"),
        "Invalid datatype of input x - Unsupported datatype: FP8",
    ),
    "huge datatype": (
        lambda: _shape(1, 64, datatype="X" * 100_000),
        f"Invalid datatype of input x - Unsupported datatype: {'X' * 40}",
    ),
    "BYTES to a numeric model": (
        lambda: _bytes_input(_element(b"ab") + _element(b"")),
        "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input of "
        "1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,64)",
    ),
    "BYTES length past the end": (
        lambda: _bytes_input(_element(b"") + _element(b"ab", announced=3)),
        "Invalid BYTES data of input x: element 1 claims 3 bytes; 2 are left",
    ),
    "BYTES length of 4 GiB": (
        lambda: _bytes_input(_element(b"", announced=2**32 - 1)),
        "Invalid BYTES data of input x: element 0 claims 4294967295 bytes; 0 are left",
    ),
    "BYTES cut length prefix": (
        lambda: _bytes_input(_element(b"ab") + b"\x01\x00"),
        "Invalid BYTES data of input x: element 1 of 2 has no 4-byte length (2 bytes left)",
    ),
    "BYTES bytes left over": (
        lambda: _bytes_input(_element(b"a") + _element(b"b") + b"junk"),
        "Invalid BYTES data of input x: 4 bytes after the last of 2 elements",
    ),
    "BYTES too few elements": (
        lambda: _bytes_input(_element(b"a")),
        "Invalid BYTES data of input x: element 1 of 2 has no 4-byte length (0 bytes left)",
    ),
    "BYTES 10^6 elements": (
        lambda: _bytes_input(b"", shape=(10**6,)),
        "Invalid 'shape' of input x: 1000000 BYTES elements exceed the limit of 65536",
    ),
    "1 MB id": (
        lambda: _digits_request(request_id="i" * 1_000_000),
        "Invalid 'id': 1000000 characters; the limit is 1024",
    ),
    "10,000 parameters": (_many_parameters, "Too many parameters in the request: 10000, at most 64"),
    "5,000 outputs": (_many_outputs, "Invalid number of outputs - 5000 exceed the limit of 1024"),
    "1,000 long unknown outputs": (
        _long_unknown_outputs,
        "Invalid output name - not found in model outputs: "
        + ", ".join(f"{index}-{'o' * 10_000}"[:100] for index in range(10))
        + " and 990 more",
    ),
    "an output twice": (
        lambda: _digits_request(outputs=("probabilities", "probabilities")),
        "Invalid outputs - output probabilities is requested twice",
    ),
    "an input twice": (_duplicate_input, "Invalid inputs - input a is given twice"),
    "shared memory input": (
        _shared_memory_input,
        "Invalid parameter 'shared_memory_region' of input x: shared memory is not supported by this server: "
        "send the tensor in the request",
    ),
    "classification output": (
        _classification_output,
        "Invalid parameter 'classification' of output probabilities: the classification extension is not "
        "supported by this server: ask for the whole output",
    ),
}


@pytest.mark.parametrize(("build", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_requests_are_invalid_argument(stub, build, message: str) -> None:
    assert_rpc_error(stub.ModelInfer, build(), INVALID, message)


def test_the_server_serves_after_hostile_requests(stub, digits_data) -> None:
    for build, _ in HOSTILE.values():
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(build(), timeout=TIMEOUT_S)
    images, labels = digits_data
    response = stub.ModelInfer(infer_request("digits", {"x": images[:32]}), timeout=TIMEOUT_S)
    assert np.mean(decode_outputs(response)["probabilities"].argmax(axis=1) == labels[:32]) >= 0.9


# --------------------------------------------------------------------------- TLS and tokens

TOKEN = "tok-v2-5b1e07"


@pytest.fixture(scope="module")
def secured_server(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """TLS and bearer tokens on one digits model."""
    directory = tmp_path_factory.mktemp("v2-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    (directory / "tokens").write_text(f"{TOKEN}\n")
    process = start_ovms(
        [
            "--model_name", "digits_v2", "--model_path", str(models_dir / "digits"), "--broker_url", redis_url,
            "--ssl_certificate", str(directory / "server.pem"), "--ssl_private_key", str(directory / "server.key"),
            "--auth_token_file", str(directory / "tokens"),
        ],
        rest=False,
    )  # fmt: skip
    ca_pem = (directory / "ca.pem").read_bytes()
    with grpc.secure_channel(process.grpc_address, grpc.ssl_channel_credentials(ca_pem)) as channel:
        ready = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady
        deadline = time.monotonic() + 120
        while not ready(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready and time.monotonic() < deadline:
            time.sleep(0.2)
    yield process, ca_pem
    process.stop()


def test_tokens_and_tls(secured_server, digits_data) -> None:
    process, ca = secured_server
    tls = grpc.ssl_channel_credentials(ca)
    with grpc.secure_channel(process.grpc_address, tls) as channel:
        anonymous = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        # probes carry no token: liveness and readiness stay open, as grpc.health.v1 and /v1/health/* do
        assert anonymous.ServerLive(pb.ServerLiveRequest(), timeout=TIMEOUT_S).live
        assert anonymous.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S).ready
        refused = grpc.StatusCode.UNAUTHENTICATED, "Missing or invalid bearer token"
        assert_rpc_error(anonymous.ModelReady, pb.ModelReadyRequest(name="digits_v2"), *refused)
        assert_rpc_error(anonymous.ServerMetadata, pb.ServerMetadataRequest(), *refused)
        assert_rpc_error(anonymous.ModelInfer, infer_request("digits_v2", {"x": digits_data[0][:2]}), *refused)
        assert_rpc_error(anonymous.RepositoryIndex, pb.RepositoryIndexRequest(), *refused)
    credentials = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(TOKEN))
    with grpc.secure_channel(process.grpc_address, credentials) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits_v2"), timeout=TIMEOUT_S).ready
        response = stub.ModelInfer(infer_request("digits_v2", {"x": digits_data[0][:8]}), timeout=TIMEOUT_S)
        classes = decode_outputs(response)["probabilities"].argmax(axis=1)
        assert np.mean(classes == digits_data[1][:8]) >= 0.8
    with grpc.insecure_channel(process.grpc_address) as channel:  # plain text is refused outright
        plain = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert rpc_error(plain.ServerLive, pb.ServerLiveRequest(), timeout=5).code() == grpc.StatusCode.UNAVAILABLE
