"""Codecs between the wire and the internal tensors, and the small pure helpers around them.

gRPC TensorProto <-> RequestTensor / array (every dtype, FP16 and BF16 bit patterns), REST JSON bodies and
answers, the Celery task envelope with its raw payload, version selection and mapping_config.json.
Uses the project's own generated protos; TensorFlow is never imported here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api.grpc_codec import signature_def, status_code, tensor_from_proto, tensor_to_proto
from api.protos import tensorflow_pb2
from api.rest_codec import COLUMN, ROW, parse_predict_body, predict_response
from inference import dtypes
from inference.errors import DeadlineExceeded, InvalidArgument, NotFound, ServingError
from inference.mapping import TensorMapping, load_mapping
from inference.model_config import ConfigError
from inference.repository import find_model_file, select_versions
from inference.request import InferenceRequest
from inference.signature import DYNAMIC, ModelSignature, TensorSpec
from inference.validation import validate_inputs
from tasks.messages import (
    JOIN_BELOW_BYTES,
    ComputedOutputs,
    PredictEnvelope,
    RequestFailure,
    pack_requests,
    unpack_requests,
)

# One sample per precision, covering each type's extremes.
SAMPLES: dict[str, np.ndarray] = {
    "FP32": np.array([[1.5, -0.0], [np.finfo(np.float32).max, np.finfo(np.float32).tiny]], dtype="<f4"),
    "FP64": np.array([[3e38, -2.5], [np.pi, 0.0]], dtype="<f8"),
    "FP16": np.array([[1.0, -2.0], [65504.0, 0.000061035156]], dtype="<f2"),
    "BF16": dtypes.float_to_bf16_bits(np.array([[1.0, -2.5], [3.0e38, 0.15625]], dtype=np.float32)),
    "I8": np.array([[-128, 127], [0, -1]], dtype="i1"),
    "U8": np.array([[0, 255], [1, 128]], dtype="u1"),
    "I16": np.array([[-32768, 32767], [0, -1]], dtype="<i2"),
    "U16": np.array([[0, 65535], [1, 2]], dtype="<u2"),
    "I32": np.array([[-(2**31), 2**31 - 1], [0, -1]], dtype="<i4"),
    # OpenVINO computes these as 32-bit integers (FP64 as FP32): validation accepts only what they hold
    "U32": np.array([[0, 2**31 - 1], [1, 2]], dtype="<u4"),
    "I64": np.array([[-(2**31), 2**31 - 1], [0, -1]], dtype="<i8"),
    "U64": np.array([[0, 2**31 - 1], [1, 2]], dtype="<u8"),
    "BOOL": np.array([[True, False], [False, True]], dtype="?"),
}
# The full range of those types (and FP64 beyond FP32's range), which the wire carries and validation refuses.
WIDE_EXTREMES: dict[str, np.ndarray] = {
    "FP64": np.array([[1e300, -2.5], [np.pi, 0.0]], dtype="<f8"),
    "U32": np.array([[0, 2**32 - 1], [1, 2]], dtype="<u4"),
    "I64": np.array([[-(2**63), 2**63 - 1], [0, -1]], dtype="<i8"),
    "U64": np.array([[0, 2**64 - 1], [1, 2]], dtype="<u8"),
}


def typed_proto(precision: str, array: np.ndarray) -> tensorflow_pb2.TensorProto:
    """A TensorProto carrying `array` in the typed *_val field TensorFlow uses for the precision."""
    info = dtypes.by_name(precision)
    proto = tensorflow_pb2.TensorProto(dtype=info.tf_enum)
    proto.tensor_shape.dim.extend(tensorflow_pb2.TensorShapeProto.Dim(size=d) for d in array.shape)
    flat = array.ravel()
    if precision == "FP16":
        flat = flat.view(np.uint16)  # half_val holds the IEEE half bit patterns
    getattr(proto, info.proto_field).extend(flat.tolist())
    return proto


def spec(name: str, precision: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, precision, shape)


def model(inputs: list[TensorSpec], outputs: list[TensorSpec] | None = None) -> ModelSignature:
    outputs = outputs or [spec("y", "FP32", (DYNAMIC, 4))]
    return ModelSignature({s.name: s for s in inputs}, {s.name: s for s in outputs})


SINGLE = model([spec("x", "FP32", (DYNAMIC, 4))])
PAIR = model([spec("a", "FP32", (DYNAMIC, 2)), spec("b", "I32", (DYNAMIC, 2))])


def b64(array: np.ndarray) -> dict[str, str]:
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")}


def parsed(body: Any, signature: ModelSignature) -> tuple[dict[str, np.ndarray], str]:
    """Parse a REST body and validate it, as the REST frontend does: named arrays of the model's types."""
    tensors, form = parse_predict_body(body, signature)
    return validate_inputs(signature, tensors), form


def parse_error(body: Any, signature: ModelSignature = SINGLE) -> str:
    with pytest.raises(InvalidArgument) as error:
        parse_predict_body(body, signature)
    return error.value.message


# --------------------------------------------------------------------------- gRPC TensorProto


@pytest.mark.parametrize("precision", list(SAMPLES))
def test_tensor_content_round_trip(precision: str) -> None:
    array = SAMPLES[precision]
    proto = tensor_to_proto(array, precision)
    assert proto.dtype == dtypes.by_name(precision).tf_enum
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    assert proto.tensor_content == array.tobytes()
    wire = tensorflow_pb2.TensorProto.FromString(proto.SerializeToString())
    tensor = tensor_from_proto(wire)
    assert (tensor.precision, tensor.shape, tensor.values) == (precision, (2, 2), None)
    decoded = validate_inputs(model([spec("t", precision, (DYNAMIC, 2))]), {"t": tensor})["t"]
    assert decoded.dtype == dtypes.by_name(precision).numpy
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("precision", list(SAMPLES))
def test_typed_val_fields_round_trip(precision: str) -> None:
    array = SAMPLES[precision]
    wire = tensorflow_pb2.TensorProto.FromString(typed_proto(precision, array).SerializeToString())
    tensor = tensor_from_proto(wire)
    assert (tensor.precision, tensor.shape, tensor.content) == (precision, (2, 2), None)
    decoded = validate_inputs(model([spec("t", precision, (DYNAMIC, 2))]), {"t": tensor})["t"]
    assert decoded.dtype == dtypes.by_name(precision).numpy
    np.testing.assert_array_equal(decoded, array)
    assert tensor_to_proto(decoded, precision).tensor_content == array.tobytes()


@pytest.mark.parametrize("precision", list(WIDE_EXTREMES))
def test_wide_integer_extremes_survive_the_wire_and_validation_refuses_them(precision: str) -> None:
    array = WIDE_EXTREMES[precision]
    from_content = tensor_from_proto(tensor_to_proto(array, precision))
    from_typed = tensor_from_proto(typed_proto(precision, array))
    assert from_content.content is not None and from_typed.values is not None
    np.testing.assert_array_equal(np.frombuffer(from_content.content, array.dtype).reshape(2, 2), array)
    np.testing.assert_array_equal(from_typed.values.reshape(2, 2), array)
    for tensor in (from_content, from_typed):
        with pytest.raises(InvalidArgument, match=f"Invalid input values - {precision} input t holds"):
            validate_inputs(model([spec("t", precision, (DYNAMIC, 2))]), {"t": tensor})


def test_fp16_half_val_bit_patterns() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_HALF, half_val=[0x3C00, 0xC000, 0x7BFF, 0x3555])
    proto.tensor_shape.dim.add(size=4)
    values = tensor_from_proto(proto).values
    assert values is not None and values.dtype == np.float16
    assert values.tolist() == [1.0, -2.0, 65504.0, 0.333251953125]


def test_bf16_bit_patterns() -> None:
    bits = dtypes.float_to_bf16_bits(np.array([1.0, -2.5, 0.15625, 3.0e38, 0.0], dtype=np.float32))
    assert bits.dtype == np.uint16
    assert bits.tolist() == [0x3F80, 0xC020, 0x3E20, 0x7F62, 0x0000]
    # 3.0e38 is not a bfloat16 value: it comes back as its nearest one, the upper 16 bits of a float32
    nearest = float(np.array([0x7F620000], dtype=np.uint32).view(np.float32)[0])
    assert dtypes.bf16_bits_to_float(bits).tolist() == [1.0, -2.5, 0.15625, nearest, 0.0]
    assert abs(nearest - 3.0e38) / 3.0e38 < 2**-8


def test_bf16_rounds_to_nearest_even() -> None:
    # 1 + 2**-8 is halfway between bfloat16 neighbours 1.0 and 1.0078125: ties go to the even pattern.
    halfway_down = np.array([0x3F808000], dtype=np.uint32).view(np.float32)
    halfway_up = np.array([0x3F818000], dtype=np.uint32).view(np.float32)
    above_half = np.array([0x3F808001], dtype=np.uint32).view(np.float32)
    assert dtypes.float_to_bf16_bits(halfway_down).tolist() == [0x3F80]
    assert dtypes.float_to_bf16_bits(halfway_up).tolist() == [0x3F82]
    assert dtypes.float_to_bf16_bits(above_half).tolist() == [0x3F81]


def test_bf16_half_val_is_passed_as_bits() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_BFLOAT16, half_val=[0x3F80, 0xC020])
    proto.tensor_shape.dim.add(size=2)
    tensor = tensor_from_proto(proto)
    assert tensor.precision == "BF16"
    assert tensor.values is not None
    assert dtypes.bf16_bits_to_float(tensor.values).tolist() == [1.0, -2.5]


def test_bf16_floats_survive_bits_and_back_exactly() -> None:
    values = np.array([1.0, -2.5, 0.15625, 1024.0, -0.0078125], dtype=np.float32)
    assert dtypes.bf16_bits_to_float(dtypes.float_to_bf16_bits(values)).tolist() == values.tolist()


def test_empty_proto_is_an_empty_tensor() -> None:
    tensor = tensor_from_proto(tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_FLOAT))
    assert tensor.precision == "FP32"
    assert tensor.shape == ()
    assert tensor.values is not None and tensor.values.size == 0


def test_unserved_dtype_is_reported_by_validation() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_COMPLEX64, tensor_content=bytes(8))
    proto.tensor_shape.dim.add(size=1)
    tensor = tensor_from_proto(proto)
    assert tensor.precision == "COMPLEX64"
    with pytest.raises(InvalidArgument, match=r"^Invalid input precision - Expected: FP32; Actual: COMPLEX64$"):
        validate_inputs(model([spec("x", "FP32", (1,))]), {"x": tensor})


def test_dt_string_is_encoded_images_refused_by_an_input_that_takes_none() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_STRING, string_val=[b"cat", b"dog\0"])
    proto.tensor_shape.dim.add(size=2)
    tensor = tensor_from_proto(proto)
    assert (tensor.precision, tensor.shape, list(tensor.values)) == ("BYTES", (2,), [b"cat", b"dog\0"])
    with pytest.raises(InvalidArgument) as error:
        validate_inputs(model([spec("x", "FP32", (-1, 64))]), {"x": tensor})
    assert error.value.message == (
        "Invalid input precision - Expected: FP32; Actual: BYTES - encoded images (JPEG, PNG) go to a 4-D input of "
        "1 or 3 channels in layout NHWC or NCHW; input x takes none: it is not 4-D but (-1,64)"
    )


def test_dt_string_in_tensor_content_is_refused() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_STRING, tensor_content=b"\xff\xd8\xff")
    with pytest.raises(InvalidArgument, match="DT_STRING elements go in string_val, not tensor_content"):
        tensor_from_proto(proto)


@pytest.mark.parametrize(("precision", "value"), [("U8", 300), ("I8", -129), ("U16", -1), ("I16", 40000)])
def test_out_of_range_int_val_is_invalid_argument(precision: str, value: int) -> None:
    proto = tensorflow_pb2.TensorProto(dtype=dtypes.by_name(precision).tf_enum, int_val=[1, value])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidArgument) as error:
        validate_inputs(model([spec("x", precision, (2,))]), {"x": tensor_from_proto(proto)})
    assert error.value.message == f"Invalid input precision - Expected: {precision}; Actual: values out of range"


def test_half_val_beyond_16_bits_is_invalid_argument() -> None:
    proto = tensorflow_pb2.TensorProto(dtype=tensorflow_pb2.DT_HALF, half_val=[0x3C00, 70000])
    proto.tensor_shape.dim.add(size=2)
    with pytest.raises(InvalidArgument, match="out of range"):
        tensor_from_proto(proto)


def test_signature_def_and_status_codes() -> None:
    definition = signature_def(PAIR)
    assert definition.method_name == "tensorflow/serving/predict"
    assert sorted(definition.inputs) == ["a", "b"]  # a proto map has no order
    assert definition.inputs["b"].name == "b"
    assert definition.inputs["b"].dtype == tensorflow_pb2.DT_INT32
    assert [d.size for d in definition.inputs["a"].tensor_shape.dim] == [-1, 2]
    assert definition.outputs["y"].dtype == tensorflow_pb2.DT_FLOAT
    assert (status_code("OK"), status_code("UNKNOWN"), status_code("whatever")) == (0, 2, 2)


# --------------------------------------------------------------------------- REST JSON bodies


def test_row_unnamed() -> None:
    arrays, form = parsed({"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]}, SINGLE)
    assert form == ROW
    assert arrays["x"].dtype == np.float32
    assert arrays["x"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_row_named_with_several_inputs() -> None:
    arrays, form = parsed({"instances": [{"a": [1, 2], "b": [3, 4]}, {"a": [5, 6], "b": [7, 8]}]}, PAIR)
    assert form == ROW
    assert arrays["a"].dtype == np.float32 and arrays["b"].dtype == np.int32
    assert arrays["a"].tolist() == [[1, 2], [5, 6]]
    assert arrays["b"].tolist() == [[3, 4], [7, 8]]


def test_column_named_and_bare() -> None:
    arrays, form = parsed({"inputs": {"a": [[1.5, 2]], "b": [[3, 4]]}}, PAIR)
    assert form == COLUMN
    assert arrays["a"].tolist() == [[1.5, 2]] and arrays["b"].tolist() == [[3, 4]]
    arrays, form = parsed({"inputs": [[1, 2, 3, 4]]}, SINGLE)
    assert form == COLUMN
    assert arrays["x"].tolist() == [[1, 2, 3, 4]]


def test_row_b64_instances_take_the_instance_shape() -> None:
    rows = np.array([[1, 2, 3, 4], [0.5, -1, 0, 8]], dtype="<f4")
    arrays, form = parsed({"instances": [b64(row) for row in rows]}, SINGLE)
    assert form == ROW
    np.testing.assert_array_equal(arrays["x"], rows)


def test_named_row_b64_instances() -> None:
    a = np.array([1, 2], dtype="<f4")
    b = np.array([-3, 4], dtype="<i4")
    arrays, _ = parsed({"instances": [{"a": b64(a), "b": b64(b)}, {"a": b64(a * 2), "b": b64(b * 2)}]}, PAIR)
    np.testing.assert_array_equal(arrays["a"], [a, a * 2])
    np.testing.assert_array_equal(arrays["b"], [b, b * 2])
    assert arrays["b"].dtype == np.int32


def test_column_b64_is_raw_bytes_of_the_input_type_in_its_signature_shape() -> None:
    tensor = np.arange(12, dtype="<f4").reshape(3, 4)
    arrays, form = parsed({"inputs": b64(tensor)}, SINGLE)
    assert form == COLUMN
    np.testing.assert_array_equal(arrays["x"], tensor)
    image_model = model([spec("data", "FP32", (1, 3, 2, 2))])
    image = np.arange(12, dtype="<f4").reshape(1, 3, 2, 2)
    np.testing.assert_array_equal(parsed({"inputs": {"data": b64(image)}}, image_model)[0]["data"], image)


def test_column_b64_of_a_byte_input() -> None:
    pixels = model([spec("p", "U8", (DYNAMIC, 3))])
    raw = np.array([[0, 128, 255], [1, 2, 3]], dtype="u1")
    arrays, _ = parsed({"inputs": {"p": b64(raw)}}, pixels)
    assert arrays["p"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["p"], raw)


JPEG = b"\xff\xd8\xff\xe0" + bytes(20)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(20)
IMAGES = ModelSignature({"data": TensorSpec("data", "FP32", (DYNAMIC, 3, 224, 224), layout="NCHW")})


def encoded(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.mark.parametrize(
    ("body", "count"),
    [
        ({"instances": [encoded(JPEG)]}, 1),
        ({"instances": [encoded(JPEG), encoded(PNG), encoded(JPEG)]}, 3),
        ({"instances": [{"data": encoded(JPEG)}, {"data": encoded(PNG)}]}, 2),
        ({"inputs": encoded(PNG)}, 1),
        ({"inputs": [encoded(PNG), encoded(JPEG)]}, 2),
        ({"inputs": {"data": encoded(JPEG)}}, 1),
        ({"inputs": {"data": [encoded(JPEG), encoded(PNG)]}}, 2),
    ],
)
def test_b64_on_an_image_input_is_one_encoded_image_per_value(body: Any, count: int) -> None:
    tensors, _ = parse_predict_body(body, IMAGES)
    tensor = tensors["data"]
    assert (tensor.precision, tensor.shape, tensor.values.dtype) == ("BYTES", (count,), object)
    assert {bytes(v[:3]) for v in tensor.values} <= {JPEG[:3], PNG[:3]}


def test_b64_on_an_image_input_of_a_raw_b64_model_is_raw_bytes() -> None:
    raw = replace(IMAGES, raw_b64=True)
    image = np.arange(3 * 224 * 224, dtype="<f4").reshape(1, 3, 224, 224)
    np.testing.assert_array_equal(parsed({"inputs": {"data": b64(image)}}, raw)[0]["data"], image)


@pytest.mark.parametrize(
    ("signature", "data", "body_of"),
    [
        (SINGLE, JPEG, lambda value: {"instances": [value]}),
        (SINGLE, PNG + bytes(3), lambda value: {"inputs": {"x": value}}),  # not a whole number of FP32 values
        (replace(IMAGES, raw_b64=True), JPEG, lambda value: {"inputs": {"data": value}}),
    ],
)
def test_an_image_sent_where_b64_is_raw_bytes_is_refused_saying_so(signature, data, body_of) -> None:
    message = parse_error(body_of(encoded(data)), signature)
    assert message.startswith("Invalid b64 value - a ")
    assert ("the model's rest_b64 setting is raw" in message) == signature.raw_b64
    assert ("images go to 4-D inputs of 1 or 3 channels in layout NHWC or NCHW" in message) != signature.raw_b64


def test_b64_on_a_4d_input_that_cannot_take_images_stays_raw_bytes() -> None:
    signed = ModelSignature({"data": TensorSpec("data", "I8", (1, 2, 2, 3), layout="NHWC")})
    raw = np.arange(12, dtype="i1").reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(parsed({"inputs": {"data": b64(raw)}}, signed)[0]["data"], raw)


def test_raw_b64_that_fits_a_dynamic_input_is_taken_whatever_its_first_bytes() -> None:
    free = model([spec("x", "U8", (DYNAMIC, DYNAMIC))])
    arrays, _ = parsed({"instances": [encoded(JPEG)]}, free)
    assert arrays["x"].tobytes() == JPEG


@pytest.mark.parametrize(
    "body",
    [{}, {"instances": [[1]], "inputs": [[1]]}, [], None, "x", {"signature_name": "serving_default"}],
)
def test_both_or_neither_format(body: Any) -> None:
    assert parse_error(body) == "Invalid JSON structure. Could not detect row or column format"


def test_unnamed_needs_a_single_input() -> None:
    message = "Invalid JSON structure. Unnamed inputs need a model with one input; this one has 2"
    assert parse_error({"instances": [[1, 2]]}, PAIR) == message
    assert parse_error({"inputs": [[1, 2]]}, PAIR) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": []}, "Invalid JSON structure. 'instances' must be a non-empty list"),
        ({"instances": [{"x": [1]}, {"y": [1]}]}, "Invalid JSON structure. Every instance must name the same inputs"),
        ({"instances": [[1, 2], [3]]}, "Invalid JSON structure. Could not detect row or column format: inconsistent"),
        ({"inputs": {"b64": "%%%"}}, "Invalid b64 value: not base64"),
        ({"inputs": {"b64": "AAA="}}, "Invalid b64 value: 2 bytes is not a whole number of FP32 values"),
        (
            {"instances": [b64(np.zeros(4, "<f4")), b64(np.zeros(3, "<f4"))]},
            "Invalid JSON structure. b64 instances differ in size",
        ),
        ({"inputs": {"nope": b64(np.zeros(4, "<f4"))}}, "b64 values need an input the model has"),
    ],
)
def test_bad_bodies(body: Any, message: str) -> None:
    assert parse_error(body).startswith(message)


def test_unknown_input_names_are_left_to_validation() -> None:
    tensors, _ = parse_predict_body({"inputs": {"z": [[1, 2, 3, 4]]}}, SINGLE)
    assert list(tensors) == ["z"]
    with pytest.raises(InvalidArgument, match="Missing input with specific name - Required input: x"):
        validate_inputs(SINGLE, tensors)


def test_response_row_single_output_is_unnamed() -> None:
    outputs = {"y": np.array([[1, 2], [3, 4]], dtype=np.float32)}
    assert predict_response(outputs, {"y": "FP32"}, ROW) == {"predictions": [[1, 2], [3, 4]]}


def test_response_row_several_outputs_are_named_per_instance() -> None:
    outputs = {"sum": np.array([[1.0], [2.0]], dtype=np.float32), "label": np.array([7, 8], dtype=np.int64)}
    assert predict_response(outputs, {"sum": "FP32", "label": "I64"}, ROW) == {
        "predictions": [{"sum": [1.0], "label": 7}, {"sum": [2.0], "label": 8}]
    }


def test_response_column() -> None:
    single = {"y": np.array([[1.5]], dtype=np.float32)}
    assert predict_response(single, {"y": "FP32"}, COLUMN) == {"outputs": [[1.5]]}
    several = {"sum": np.array([[1]], dtype=np.int32), "ok": np.array([[True]])}
    assert predict_response(several, {"sum": "I32", "ok": "BOOL"}, COLUMN) == {
        "outputs": {"sum": [[1]], "ok": [[True]]}
    }


def test_response_bf16_outputs_are_floats() -> None:
    bits = dtypes.float_to_bf16_bits(np.array([[1.0, -2.5]], dtype=np.float32))
    document = predict_response({"y": bits}, {"y": "BF16"}, COLUMN)
    assert document == {"outputs": [[1.0, -2.5]]}
    assert json.loads(json.dumps(document)) == document


# --------------------------------------------------------------------------- task messages


def request(request_id: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> InferenceRequest:
    return InferenceRequest("multi", 3, inputs, outputs, deadline=1000.0 + len(request_id), request_id=request_id)


def packed(requests: list[InferenceRequest], precisions: dict[str, str]) -> tuple[dict, bytes]:
    """The envelope as it goes on the wire and the payload as Redis stores it (its parts joined)."""
    envelope, parts = pack_requests(requests, precisions)
    return envelope.to_wire(), b"".join(parts)


def test_pack_and_unpack_several_requests_with_several_inputs() -> None:
    requests = [
        request("r1", {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "b": np.array([[1, -2]], dtype=np.int32)}),
        request("r22", {"a": np.ones((1, 2), np.float32), "b": np.zeros((0, 2), np.int32)}, ["sum"]),
        request("r333", {"a": np.full((2, 2), -1.5, np.float32), "b": np.array([[7, 8], [9, 10]], np.int32)}),
    ]
    envelope, payload = packed(requests, {"a": "FP32", "b": "I32"})
    assert envelope["model"] == "multi" and envelope["version"] == 3
    assert envelope["deadline"] == 1004.0  # the message lives while its latest request still waits
    offsets = [(offset, nbytes) for entry in envelope["requests"] for *_, offset, nbytes in entry["inputs"]]
    assert offsets == [(0, 24), (24, 8), (32, 8), (40, 0), (40, 16), (56, 16)]
    assert len(payload) == 72

    unpacked = unpack_requests(PredictEnvelope.from_wire(json.loads(json.dumps(envelope))), payload)
    assert [r.request_id for r in unpacked] == ["r1", "r22", "r333"]
    assert [r.output_filter for r in unpacked] == [None, ["sum"], None]
    for original, copy in zip(requests, unpacked, strict=True):
        assert (copy.model, copy.version, copy.deadline) == ("multi", 3, original.deadline)
        assert list(copy.inputs) == list(original.inputs)
        for name, array in original.inputs.items():
            assert copy.inputs[name].dtype == array.dtype
            np.testing.assert_array_equal(copy.inputs[name], array)


def test_unpack_reads_tensors_at_their_offsets() -> None:
    requests = [request("x", {"b": np.array([[1, 2]], np.int32)}), request("y", {"b": np.array([[3, 4]], np.int32)})]
    envelope, payload = packed(requests, {"b": "I32"})
    second = envelope["requests"][1]["inputs"][0]
    assert np.frombuffer(payload[second[3] : second[3] + second[4]], np.int32).tolist() == [3, 4]


def test_envelope_carries_no_tensor_data() -> None:
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)  # 602112 bytes
    envelope, payload = packed([request("img", {"data": image})], {"data": "FP32"})
    text = json.dumps(envelope)
    assert len(payload) == image.nbytes == 602112
    assert len(text) < 500, text
    assert envelope["requests"][0]["inputs"] == [["data", "FP32", [1, 3, 224, 224], 0, 602112]]


def test_a_large_payload_is_sent_as_views_of_the_arrays() -> None:
    arrays = [np.arange(JOIN_BELOW_BYTES // 4, dtype=np.float32).reshape(-1, 4), np.ones((3, 4), np.float32)]
    _, parts = pack_requests([request(f"r{i}", {"data": a}) for i, a in enumerate(arrays)], {"data": "FP32"})
    assert all(np.shares_memory(np.asarray(part), array) for part, array in zip(parts, arrays, strict=True))
    assert b"".join(parts) == b"".join(array.tobytes() for array in arrays)


def test_unpack_rejects_metadata_that_does_not_match_the_payload() -> None:
    envelope, payload = packed([request("r", {"b": np.array([[1, 2]], np.int32)})], {"b": "I32"})
    with pytest.raises(ValueError, match="does not match the payload"):
        unpack_requests(PredictEnvelope.from_wire(envelope), payload[:4])
    envelope["requests"][0]["inputs"][0][2] = [1, 3]
    with pytest.raises(ValueError, match="does not match the payload"):
        unpack_requests(PredictEnvelope.from_wire(envelope), payload)


@pytest.mark.parametrize("precision", list(SAMPLES))
def test_outputs_round_trip(precision: str) -> None:
    sample = WIDE_EXTREMES.get(precision, SAMPLES[precision])  # outputs may hold any value of their type
    outputs = {"first": sample, "second": sample[:1]}
    packed = ComputedOutputs.pack(
        outputs, {"first": precision, "second": precision}, version=3, batch=5, started=100.5, infer_s=0.25
    )
    computed = ComputedOutputs.from_wire(packed.to_wire())
    result = computed.arrays()
    assert (computed.version, computed.batch, computed.started, computed.infer_s) == (3, 5, 100.5, 0.25)
    assert list(result) == ["first", "second"]
    for name, array in outputs.items():
        assert result[name].dtype == array.dtype
        np.testing.assert_array_equal(result[name], array)


@pytest.mark.parametrize("error", [NotFound("gone"), InvalidArgument("bad"), DeadlineExceeded("late")])
def test_errors_round_trip(error: ServingError) -> None:
    entry = json.loads(json.dumps(RequestFailure(error).to_wire()))
    assert entry == {"error": [type(error).__name__, error.message]}
    decoded = RequestFailure.from_wire(entry).error
    assert type(decoded) is type(error)
    assert decoded.message == error.message
    assert decoded.http_status == error.http_status


def test_unknown_error_kind_is_internal() -> None:
    decoded = RequestFailure.from_wire({"error": ["Exploded", "boom"]}).error
    assert (decoded.grpc_code, decoded.message) == ("INTERNAL", "boom")


# --------------------------------------------------------------------------- repository and mapping


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"all": {}}, [1, 2, 5, 10]),
        ({"latest": {"num_versions": 1}}, [10]),
        ({"latest": {"num_versions": 2}}, [5, 10]),
        ({"latest": {"num_versions": 9}}, [1, 2, 5, 10]),
        ({"specific": {"versions": [2, 5]}}, [2, 5]),
        ({"specific": {"versions": [3, 10, 11]}}, [10]),
        ({"specific": {"versions": [4]}}, []),
    ],
)
def test_select_versions(policy: dict[str, Any], expected: list[int]) -> None:
    assert select_versions([10, 2, 5, 1], policy) == expected


def test_select_versions_of_nothing() -> None:
    assert select_versions([], {"latest": {"num_versions": 1}}) == []
    assert select_versions([], {"all": {}}) == []


def test_find_model_file(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(ConfigError, match="no model"):
        find_model_file(tmp_path)  # an .xml without its .bin is not a model
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    assert find_model_file(tmp_path) == tmp_path / "model.onnx"
    (tmp_path / "model.bin").write_bytes(b"weights")
    assert find_model_file(tmp_path) == tmp_path / "model.xml"


def test_load_mapping(tmp_path: Path) -> None:
    assert load_mapping(tmp_path) == TensorMapping()
    (tmp_path / "mapping_config.json").write_text(
        json.dumps({"inputs": {"input_tensor": "in"}, "outputs": {"output_tensor": "out"}})
    )
    mapping = load_mapping(tmp_path)
    assert mapping == TensorMapping({"input_tensor": "in"}, {"output_tensor": "out"})
    assert (mapping.input_alias("input_tensor"), mapping.input_alias("other")) == ("in", "other")
    assert (mapping.output_alias("output_tensor"), mapping.output_alias("other")) == ("out", "other")


def test_load_mapping_with_one_section(tmp_path: Path) -> None:
    (tmp_path / "mapping_config.json").write_text(json.dumps({"outputs": {"prob": "probabilities"}}))
    assert load_mapping(tmp_path) == TensorMapping({}, {"prob": "probabilities"})


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({"inputs": {"a": "b"}, "extra": {}}),
        json.dumps({"inputs": ["a"]}),
        json.dumps({"outputs": {"a": 1}}),
        json.dumps({"inputs": {"a": ""}}),
        json.dumps({"inputs": {"a": "same", "b": "same"}}),
    ],
)
def test_invalid_mapping_files(tmp_path: Path, text: str) -> None:
    (tmp_path / "mapping_config.json").write_text(text)
    with pytest.raises(ConfigError, match=r"mapping_config\.json"):
        load_mapping(tmp_path)
