"""KServe v2 gRPC messages <-> the data plane's tensors (api.kserve.grpc_codec, tensors, request_fields,
model_info), every datatype typed and raw through validation, including those no example model has."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format

from api.kserve.datatypes import config_data_type
from api.kserve.grpc_codec import infer_inputs, infer_response, parameter_values, requested_outputs
from api.kserve.model_info import model_config
from api.kserve.request_fields import request_id, timeout_s
from api.kserve.tensors import MAX_BYTES_ELEMENTS, split_bytes
from api.protos import grpc_service_pb2 as pb
from api.protos import model_config_pb2
from inference import dtypes
from inference.errors import InvalidArgument
from inference.request import InferenceResult
from inference.signature import ModelSignature, TensorSpec
from inference.validation import validate_inputs

# datatype -> (precision, values within what OpenVINO computes, typed contents field or None)
CASES = {
    "BOOL": ("BOOL", np.array([[True, False]]), "bool_contents"),
    "INT8": ("I8", np.array([[-128, 127]], np.int8), "int_contents"),
    "INT16": ("I16", np.array([[-32768, 32767]], np.int16), "int_contents"),
    "INT32": ("I32", np.array([[-(2**31), 2**31 - 1]], np.int32), "int_contents"),
    "INT64": ("I64", np.array([[-(2**31), 2**31 - 1]], np.int64), "int64_contents"),
    "UINT8": ("U8", np.array([[0, 255]], np.uint8), "uint_contents"),
    "UINT16": ("U16", np.array([[0, 65535]], np.uint16), "uint_contents"),
    "UINT32": ("U32", np.array([[0, 2**31 - 1]], np.uint32), "uint_contents"),
    "UINT64": ("U64", np.array([[0, 2**31 - 1]], np.uint64), "uint64_contents"),
    "FP16": ("FP16", np.array([[65504, -0.5]], np.float16), None),
    "BF16": ("BF16", np.array([[0x3F80, 0xC000]], np.uint16), None),  # 1.0, -2.0 as bfloat16 bit patterns
    "FP32": ("FP32", np.array([[1.5, -np.inf]], np.float32), "fp32_contents"),
    "FP64": ("FP64", np.array([[0.1, -3e38]], np.float64), "fp64_contents"),
}


def request_of(datatype: str, array: np.ndarray, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="t", datatype=datatype, shape=array.shape)
    if raw:
        request.raw_input_contents.append(array.tobytes())
    else:
        getattr(tensor.contents, CASES[datatype][2]).extend(array.ravel().tolist())
    return request


def signature_for(precision: str) -> ModelSignature:
    return ModelSignature(inputs={"t": TensorSpec("t", precision, (-1, 2))}, outputs={})


@pytest.mark.parametrize("datatype", CASES)
def test_raw_inputs_of_every_datatype(datatype: str) -> None:
    precision, array, _ = CASES[datatype]
    arrays = validate_inputs(signature_for(precision), infer_inputs(request_of(datatype, array, raw=True)))
    np.testing.assert_array_equal(arrays["t"], array.astype(dtypes.by_name(precision).numpy))


@pytest.mark.parametrize("datatype", [d for d, (_, _, field) in CASES.items() if field])
def test_typed_inputs_of_every_datatype(datatype: str) -> None:
    precision, array, _ = CASES[datatype]
    arrays = validate_inputs(signature_for(precision), infer_inputs(request_of(datatype, array, raw=False)))
    assert arrays["t"].dtype == dtypes.by_name(precision).numpy
    np.testing.assert_array_equal(arrays["t"], array)


@pytest.mark.parametrize(
    ("datatype", "values", "message"),
    [
        ("INT8", [300, 0], "Invalid input precision - Expected: I8; Actual: values out of range"),
        ("UINT16", [70000, 0], "Invalid input precision - Expected: U16; Actual: values out of range"),
        ("INT64", [2**40, 0], "Invalid input values - I64 input t holds 1099511627776, outside"),
        ("UINT64", [2**63, 0], "Invalid input values - U64 input t holds 9223372036854775808, outside"),
    ],
)
def test_typed_values_beyond_the_type_are_refused(datatype: str, values: list[int], message: str) -> None:
    precision, _, field = CASES[datatype]
    request = pb.ModelInferRequest()
    getattr(request.inputs.add(name="t", datatype=datatype, shape=[1, 2]).contents, field).extend(values)
    with pytest.raises(InvalidArgument, match=message):
        validate_inputs(signature_for(precision), infer_inputs(request))


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_half_precision_has_no_typed_contents(datatype: str) -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="t", datatype=datatype, shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    message = f"{datatype} has no typed contents field in the protocol: send it in raw_input_contents"
    with pytest.raises(InvalidArgument, match=message):
        infer_inputs(request)


def test_bytes_inputs_typed_and_raw_give_the_same_tensor() -> None:
    elements = [b"\xff\xd8jpeg", b"", b"png\x00"]
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="img", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(elements)
    raw = pb.ModelInferRequest(raw_input_contents=[b"".join(len(e).to_bytes(4, "little") + e for e in elements)])
    raw.inputs.add(name="img", datatype="BYTES", shape=[3])
    for request in (typed, raw):
        tensor = infer_inputs(request)["img"]
        assert (tensor.precision, tensor.shape, tensor.content) == ("BYTES", (3,), None)
        assert tensor.values.dtype == object and tensor.values.tolist() == elements


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x05\x00\x00\x00abc", 1, "BYTES element 0 announces 5 bytes; 3 remain"),
        (b"\x00\x00", 1, "BYTES element 0 has a cut length prefix"),
        (b"\x00\x00\x00\x00\x00", 1, "1 bytes follow its 1 BYTES elements"),
        (b"", 1, "0 BYTES elements for a shape that holds 1"),
        (b"\xff\xff\xff\xff", 1, "announces 4294967295 bytes; 0 remain"),
    ],
)
def test_split_bytes_checks_every_bound(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        split_bytes(raw, count, "input x")


def test_bytes_elements_are_bounded_before_they_are_made() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="t", datatype="BYTES", shape=[MAX_BYTES_ELEMENTS + 1])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_BYTES_ELEMENTS}"):
        infer_inputs(request)


def test_outputs_parameters_and_id() -> None:
    request = pb.ModelInferRequest(id="r")
    request.outputs.add(name="b")
    request.outputs.add(name="a")
    request.parameters["timeout"].int64_param = 2_500_000
    request.parameters["flag"].bool_param = True
    request.parameters["empty"].CopyFrom(pb.InferParameter())
    assert requested_outputs(request) == ["b", "a"]
    values = parameter_values(request.parameters, "the request")
    assert values == {"timeout": 2_500_000, "flag": True, "empty": None}
    assert timeout_s(values) == 2.5
    assert timeout_s({"timeout": 0}) is None  # 0: none, as in Triton
    assert request_id("x" * 1024) == "x" * 1024
    with pytest.raises(InvalidArgument, match="at most 1024"):
        request_id("x" * 1025)


def test_infer_response_is_raw_in_the_order_asked() -> None:
    result = InferenceResult(
        version=3,
        outputs={"a": np.array([[1.5, 2.0]], np.float32), "b": np.array([[True, False]])},
        precisions={"a": "FP32", "b": "BOOL"},
    )
    request = pb.ModelInferRequest(model_name="m", id="req")
    response = infer_response(request, result, ["b", "a"])
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "req")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("b", "BOOL", [1, 2]),
        ("a", "FP32", [1, 2]),
    ]
    assert list(response.raw_output_contents) == [b"\x01\x00", np.array([1.5, 2.0], np.float32).tobytes()]
    assert [o.name for o in infer_response(request, result, []).outputs] == ["a", "b"]


def test_model_config_document_fills_triton_model_config() -> None:
    signature = ModelSignature(
        inputs={"x": TensorSpec("x", "FP16", (-1, 3))}, outputs={"y": TensorSpec("y", "BF16", (-1, 3))}
    )
    config = json_format.ParseDict(model_config("m", signature), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.backend, config.max_batch_size) == ("m", "OpenVINO", "openvino", 0)
    assert (config.input[0].data_type, list(config.input[0].dims)) == (model_config_pb2.TYPE_FP16, [-1, 3])
    assert config.output[0].data_type == model_config_pb2.TYPE_BF16
    for precision in dtypes.BY_NAME:  # every precision has a DataType value
        assert model_config_pb2.DataType.Value(config_data_type(precision))
    assert config_data_type("BYTES") == "TYPE_STRING"
