"""The KServe v2 REST inference body (api.kserve.rest_codec) and the tensors both v2 frontends share
(api.kserve.tensors): JSON and binary tensor data, every size checked against the bytes there, the answer's
layout; and what a binary body holds of the api's in-flight budget (api.rest_limits)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest

from api.admission import Admission
from api.kserve.rest_codec import InferBody, infer_response, parse_infer_body
from api.kserve.tensors import MAX_BYTES_ELEMENTS, bytes_elements, raw_tensor, tensor_shape
from api.rest_limits import JSON_BODY_FACTOR, JSON_CONTAINER_BYTES, JSON_QUOTE_BYTES, _held
from inference import dtypes
from inference.errors import InvalidArgument
from inference.request import InferenceResult
from inference.signature import ModelSignature, TensorSpec
from inference.validation import MAX_ELEMENTS, validate_inputs


def binary_body(document: dict[str, Any], *contents: bytes) -> tuple[bytes, str]:
    """A body in Triton's binary tensor data layout and its Inference-Header-Content-Length."""
    header = json.dumps(document).encode()
    return header + b"".join(contents), str(len(header))


def serialized(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def tensor(name: str = "x", datatype: str = "FP32", shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [1, 4] if shape is None else shape, **fields}


def parse(document: dict[str, Any]) -> InferBody:
    return parse_infer_body(json.dumps(document).encode(), None)


def refused(body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(InvalidArgument) as error:
        parse_infer_body(body, header_length)
    return error.value.message


def refused_json(document: Any) -> str:
    return refused(json.dumps(document).encode())


FOUR = ModelSignature({"x": TensorSpec("x", "FP32", (-1, 4))}, {"y": TensorSpec("y", "FP32", (-1, 4))})


# --- JSON tensors


def test_flat_and_nested_data_give_the_same_tensor() -> None:
    flat = parse({"inputs": [tensor(shape=[2, 2], data=[1, 2, 3, 4])]}).inputs["x"]
    nested = parse({"inputs": [tensor(shape=[2, 2], data=[[1, 2], [3, 4]])]}).inputs["x"]
    assert flat.precision == nested.precision == "FP32"
    assert flat.shape == nested.shape == (2, 2)
    np.testing.assert_array_equal(flat.values, nested.values)


def test_request_fields() -> None:
    body = parse(
        {
            "id": "req-7",
            "inputs": [tensor(data=[1, 2, 3, 4])],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
            "parameters": {"timeout": 2_500_000, "binary_data_output": False, "sequence_id": 3, "custom": "kept"},
        }
    )
    assert body.request_id == "req-7"
    assert body.outputs == ["y", "z"]
    assert (body.binary("y"), body.binary("z")) == (True, False)
    assert body.timeout_s == 2.5
    everything = parse({"inputs": [tensor(data=[1, 2, 3, 4])], "parameters": {"binary_data_output": True}})
    assert (everything.outputs, everything.binary("y"), everything.request_id, everything.timeout_s) == (
        None,
        True,
        "",
        None,
    )


@pytest.mark.parametrize(
    ("datatype", "data", "precision", "expected"),
    [
        ("BOOL", [True, False], "BOOL", [True, False]),
        ("UINT8", [0, 255], "U8", [0, 255]),
        ("UINT16", [0, 65535], "U16", [0, 65535]),
        ("UINT32", [0, 2**31 - 1], "U32", [0, 2**31 - 1]),
        ("UINT64", [0, 2**31 - 1], "U64", [0, 2**31 - 1]),
        ("INT8", [-128, 127], "I8", [-128, 127]),
        ("INT16", [-32768, 32767], "I16", [-32768, 32767]),
        ("INT32", [-(2**31), 2**31 - 1], "I32", [-(2**31), 2**31 - 1]),
        ("INT64", [-(2**31), 2.0], "I64", [-(2**31), 2]),
        ("FP16", [1.5, -65504], "FP16", [1.5, -65504]),
        ("FP32", [1.5, 3], "FP32", [1.5, 3]),
        ("FP64", [1e30, float("nan")], "FP64", [1e30, float("nan")]),
        ("BF16", [1.5, -2], "BF16", [1.5, -2]),
    ],
)
def test_every_numeric_datatype_reaches_validation_as_its_precision(
    datatype: str, data: list[Any], precision: str, expected: list[Any]
) -> None:
    """The declared datatype is the tensor's precision, so validation compares it with the model's; against a
    model of that precision the values come out exactly."""
    sent = parse({"inputs": [tensor(datatype=datatype, shape=[1, 2], data=data)]}).inputs["x"]
    assert sent.precision == precision
    signature = ModelSignature({"x": TensorSpec("x", precision, (-1, 2))})
    array = validate_inputs(signature, {"x": sent})["x"]
    values = dtypes.bf16_bits_to_float(array) if precision == "BF16" else array
    np.testing.assert_array_equal(values, np.array([expected], dtype=values.dtype))
    other = "I32" if precision == "FP32" else "FP32"
    with pytest.raises(InvalidArgument, match=f"Invalid input precision - Expected: {other}; Actual: {precision}"):
        validate_inputs(ModelSignature({"x": TensorSpec("x", other, (-1, 2))}), {"x": sent})


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("FP32", ["1", 2], "strings in a FP32 tensor"),
        ("INT32", [True, False], "booleans in a INT32 tensor"),
        ("BOOL", [1, 0], "integers in a BOOL tensor"),
        ("FP32", [1, None], "mixed values, or integers beyond 64 bits in a FP32 tensor"),
        ("UINT64", [2**64, 1], "mixed values, or integers beyond 64 bits"),
        ("FP32", [{"b64": "AAAA"}, 1], "mixed values"),
        ("FP32", [[1, 2], [3]], "ragged or too deeply nested lists"),
    ],
)
def test_data_of_the_wrong_kind_is_refused(datatype: str, data: list[Any], message: str) -> None:
    assert message in refused_json({"inputs": [tensor(datatype=datatype, shape=[2], data=data)]})


@pytest.mark.parametrize(
    ("precision", "values", "message"),
    [
        ("U8", [300, 1], "values out of range"),
        ("I32", [float("nan"), 1], "NaN or infinite values"),
        ("I32", [float("inf"), 1], "NaN or infinite values"),
        ("I8", [1.5, 1], "fractional values"),
        ("I64", [2**40, 1], "outside -2147483648..2147483647"),
    ],
)
def test_validation_refuses_values_the_type_cannot_hold(precision: str, values: list[Any], message: str) -> None:
    datatype = {"U8": "UINT8", "I32": "INT32", "I8": "INT8", "I64": "INT64"}[precision]
    sent = parse({"inputs": [tensor(datatype=datatype, shape=[1, 2], data=values)]}).inputs["x"]
    with pytest.raises(InvalidArgument, match=message):
        validate_inputs(ModelSignature({"x": TensorSpec("x", precision, (-1, 2))}), {"x": sent})


def test_the_element_count_must_match_the_shape() -> None:
    message = refused_json({"inputs": [tensor(shape=[2, 3], data=[1, 2, 3, 4, 5])]})
    assert message == "Invalid 'data' of input 'x': shape [2, 3] holds 6 elements; 'data' has 5"
    assert "holds 0 elements; 'data' has 1" in refused_json({"inputs": [tensor(shape=[0, 4], data=[1])]})


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([1, -4], "Unable to parse 'shape' of input 'x': a list of at most 32 non-negative integers"),
        ([1, 2.0], "a list of at most 32 non-negative integers"),
        ([True, 4], "a list of at most 32 non-negative integers"),
        ("[1, 4]", "a list of at most 32 non-negative integers"),
        ([1] * 33, "a list of at most 32 non-negative integers"),
        ([1000, 1000, 1000], f"exceeds {MAX_ELEMENTS} elements"),
        ([0, 2**62, 2**62], f"exceeds {MAX_ELEMENTS} elements"),
    ],
)
def test_shapes_are_checked_before_anything_is_allocated(shape: Any, message: str) -> None:
    assert message in refused_json({"inputs": [tensor(shape=shape, data=[1])]})


def test_deep_nesting_is_refused() -> None:
    deep: Any = [1.0]
    for _ in range(100):
        deep = [deep]
    assert "Unable to parse 'data'" in refused_json({"inputs": [tensor(shape=[1], data=deep)]})
    assert "lists nested deeper than 32" in refused_json({"inputs": [tensor(datatype="BYTES", shape=[1], data=deep)]})
    too_deep_to_parse = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(too_deep_to_parse).startswith("Invalid JSON")


def test_bytes_in_json_are_utf8_or_base64() -> None:
    text = parse({"inputs": [tensor(datatype="BYTES", shape=[2], data=["héllo", ""])]}).inputs["x"]
    assert (text.precision, text.shape, list(text.values)) == ("BYTES", (2,), ["héllo".encode(), b""])
    assert text.values.dtype == object
    encoded = [base64.b64encode(b"\x89PNG\x00").decode(), [base64.b64encode(b"\xff").decode()]]
    raw = parse(
        {"inputs": [tensor(datatype="BYTES", shape=[2], data=encoded, parameters={"content_type": "base64"})]}
    ).inputs["x"]
    assert list(raw.values) == [b"\x89PNG\x00", b"\xff"]
    with pytest.raises(InvalidArgument, match="Invalid input precision - Expected: FP32; Actual: BYTES"):
        validate_inputs(ModelSignature({"x": TensorSpec("x", "FP32", (-1,))}), {"x": raw})


def test_bytes_in_json_must_be_strings() -> None:
    assert "BYTES elements are strings" in refused_json(
        {"inputs": [tensor(datatype="BYTES", shape=[2], data=[1, "a"])]}
    )
    not_base64 = tensor(datatype="BYTES", shape=[1], data=["%%%"], parameters={"content_type": "base64"})
    assert "element 0 is not base64" in refused_json({"inputs": [not_base64]})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "Invalid inference request: a JSON object"),
        ({}, "Unable to parse 'inputs': a non-empty list of tensors"),
        ({"inputs": []}, "Unable to parse 'inputs': a non-empty list of tensors"),
        ({"inputs": [1]}, "each is an object with a 'name' string"),
        ({"inputs": [tensor(data=[1, 2, 3, 4]), tensor(data=[1, 2, 3, 4])]}, "input 'x' is given twice"),
        ({"inputs": [tensor(datatype="FP8", data=[1, 2, 3, 4])]}, "Unsupported datatype: FP8"),
        ({"inputs": [tensor(datatype=32, data=[1, 2, 3, 4])]}, "Unable to parse 'datatype' of input 'x'"),
        ({"inputs": [tensor()]}, "it needs either 'data' or parameters.binary_data_size, not both"),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4], parameters={"binary_data_size": 0})]},
            "it needs either 'data' or parameters.binary_data_size, not both",
        ),
        ({"inputs": [tensor(data=5)]}, "Unable to parse 'data' of input 'x': a list"),
        ({"inputs": [tensor(data=[1, 2, 3, 4], parameters=[1])]}, "Unable to parse 'parameters' of input 'x'"),
        (
            {"inputs": [tensor(parameters={"shared_memory_region": "r"})]},
            "Invalid parameter 'shared_memory_region' of input 'x': shared memory is not supported by this server",
        ),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4])], "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
            "Invalid parameter 'classification' of output 'y': the classification extension is not supported",
        ),
        ({"inputs": [tensor(data=[1, 2, 3, 4])], "outputs": {"name": "y"}}, "Unable to parse 'outputs': a list"),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4])], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "Unable to parse 'binary_data' of output 'y': true or false",
        ),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4])], "parameters": {"binary_data_output": "yes"}},
            "Unable to parse 'binary_data_output' of the request: true or false",
        ),
        ({"inputs": [tensor(data=[1, 2, 3, 4])], "parameters": {"timeout": -1}}, "Invalid 'timeout' parameter"),
        ({"inputs": [tensor(data=[1, 2, 3, 4])], "parameters": "fast"}, "Unable to parse 'parameters' of the request"),
        (
            {"inputs": [tensor(data=[1, 2, 3, 4])], "parameters": {f"p{i}": i for i in range(65)}},
            "Too many parameters in the request: 65, at most 64",
        ),
        ({"inputs": [tensor(data=[1, 2, 3, 4])], "id": 7}, "Unable to parse 'id': a string"),
        ({"inputs": [tensor(data=[1, 2, 3, 4])], "id": "i" * (1 << 20)}, "Invalid 'id': 1048576 characters"),
    ],
)
def test_malformed_requests_are_refused_with_what_is_wrong(document: Any, message: str) -> None:
    assert message in refused_json(document)


def test_a_long_name_is_cut_in_messages() -> None:
    message = refused_json({"inputs": [tensor(name="n" * 100_000, datatype=1, data=[1, 2, 3, 4])]})
    assert len(message) < 200


# --- binary tensor data


def test_binary_inputs_are_views_of_the_body_in_input_order() -> None:
    a, b = np.arange(4, dtype="<f4"), np.array([[1, -2]], dtype="<i8")
    body, length = binary_body(
        {
            "inputs": [
                tensor("a", parameters={"binary_data_size": 16}),
                tensor("j", shape=[1], data=[7.0]),
                tensor("b", "INT64", [1, 2], parameters={"binary_data_size": 16}),
            ]
        },
        a.tobytes(),
        b.tobytes(),
    )
    inputs = parse_infer_body(body, length).inputs
    assert isinstance(inputs["a"].content, memoryview) and inputs["a"].content.obj is body
    assert bytes(inputs["a"].content) == a.tobytes() and bytes(inputs["b"].content) == b.tobytes()
    assert (inputs["a"].precision, inputs["b"].precision, inputs["b"].shape) == ("FP32", "I64", (1, 2))
    assert inputs["j"].values.tolist() == [7.0]


def test_binary_bytes_elements() -> None:
    content = serialized(b"\xff\xd8jpeg", b"", b"png")
    body, length = binary_body(
        {"inputs": [tensor(datatype="BYTES", shape=[3], parameters={"binary_data_size": len(content)})]}, content
    )
    sent = parse_infer_body(body, length).inputs["x"]
    assert (sent.precision, sent.shape, list(sent.values)) == ("BYTES", (3,), [b"\xff\xd8jpeg", b"", b"png"])


@pytest.mark.parametrize(
    ("header_length", "message"),
    [
        ("abc", "Invalid Inference-Header-Content-Length header: abc"),
        ("-5", "Invalid Inference-Header-Content-Length header: -5"),
        (" 12", "Invalid Inference-Header-Content-Length header"),
        ("1" * 40, "Invalid Inference-Header-Content-Length header"),
        ("0", "the JSON header takes 1..120 bytes of this body"),
        ("121", "Invalid Inference-Header-Content-Length header: 121; the JSON header takes 1..120 bytes"),
        ("999999999999", "the JSON header takes 1..120 bytes"),
        ("10", "Invalid JSON"),
    ],
)
def test_header_lengths_that_do_not_fit_the_body(header_length: str, message: str) -> None:
    body, _ = binary_body({"inputs": [tensor(parameters={"binary_data_size": 16})]}, bytes(16))
    assert len(body) == 120
    assert message in refused(body, header_length)


@pytest.mark.parametrize(
    ("sizes", "contents", "message"),
    [
        ([17], [bytes(16)], "Invalid binary_data_size of input 'a': 17 bytes, but 16 bytes of binary data are left"),
        ([16, 16], [bytes(24)], "Invalid binary_data_size of input 'b': 16 bytes, but 8 bytes of binary data are left"),
        ([2**62], [bytes(16)], "Invalid binary_data_size of input 'a': 4611686018427387904 bytes, but 16"),
        ([8], [bytes(16)], "Invalid data size of input 'a': shape [1, 4] of FP32 takes 16 bytes; got 8"),
        ([16], [bytes(20)], "Invalid binary data: 4 bytes after the last binary input"),
        ([-1], [bytes(16)], "Unable to parse 'binary_data_size' of input 'a': a non-negative integer"),
        ([True], [bytes(16)], "Unable to parse 'binary_data_size' of input 'a': a non-negative integer"),
        (["16"], [bytes(16)], "Unable to parse 'binary_data_size' of input 'a': a non-negative integer"),
    ],
)
def test_binary_sizes_that_do_not_add_up(sizes: list[Any], contents: list[bytes], message: str) -> None:
    inputs = [tensor(name, parameters={"binary_data_size": size}) for name, size in zip("ab", sizes, strict=False)]
    body, length = binary_body({"inputs": inputs}, *contents)
    assert message in refused(body, length)


def test_binary_inputs_need_the_header() -> None:
    body = json.dumps({"inputs": [tensor(parameters={"binary_data_size": 16})]}).encode()
    assert "(binary data follows the JSON only with the Inference-Header-Content-Length header)" in refused(body)
    empty = parse({"inputs": [tensor(shape=[0, 4], parameters={"binary_data_size": 0})]}).inputs["x"]
    assert len(empty.content) == 0


@pytest.mark.parametrize(
    ("content", "count", "message"),
    [
        (serialized(b"abc")[:-1], 1, "element 0 claims 3 bytes; 2 are left"),
        (struct.pack("<I", 2**32 - 1) + b"x", 1, "element 0 claims 4294967295 bytes; 1 are left"),
        (serialized(b"a") + b"\x01\x00", 2, "element 1 of 2 has no 4-byte length (2 bytes left)"),
        (serialized(b"a", b"b"), 1, "5 bytes after the last of 1 elements"),
        (b"", 1, "element 0 of 1 has no 4-byte length (0 bytes left)"),
        (b"", MAX_BYTES_ELEMENTS + 1, f"exceed the limit of {MAX_BYTES_ELEMENTS}"),
    ],
)
def test_bytes_elements_that_overrun(content: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid (BYTES data|'shape') of input 'x'") as error:
        bytes_elements(content, count, "input 'x'")
    assert message in error.value.message


def test_raw_tensors_of_every_fixed_size_type() -> None:
    for precision in ("FP64", "U16", "BF16", "BOOL"):
        itemsize = dtypes.by_name(precision).numpy.itemsize
        sent = raw_tensor(precision, (2, 3), memoryview(bytes(6 * itemsize)), "input 'x'")
        assert (sent.precision, sent.shape, len(sent.content)) == (precision, (2, 3), 6 * itemsize)
    with pytest.raises(InvalidArgument, match=r"shape \[2, 3\] of UINT16 takes 12 bytes; got 11"):
        raw_tensor("U16", (2, 3), bytes(11), "input 'x'")
    assert tensor_shape([], "input 'x'") == ()


# --- the answer


def result(**outputs: np.ndarray) -> InferenceResult:
    precisions = {"FP32": "FP32", "FP16": "FP16", "BOOL": "BOOL", "UINT16": "BF16", "INT64": "I64"}
    answer = InferenceResult(3, outputs)
    answer.precisions = {name: precisions[name.split("_")[0]] for name in outputs}
    return answer


def test_a_json_answer() -> None:
    answer = result(FP32_y=np.array([[1.5, 2]], dtype="<f4"), BOOL_b=np.array([True, False]))
    body = parse({"id": "q", "inputs": [tensor(data=[1, 2, 3, 4])]})
    parts, length = infer_response("m", answer, body)
    assert length is None and len(parts) == 1
    assert json.loads(parts[0]) == {
        "model_name": "m",
        "model_version": "3",
        "id": "q",
        "outputs": [
            {"name": "FP32_y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]},
            {"name": "BOOL_b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        ],
    }


def test_a_binary_answer_lists_its_outputs_sizes_and_appends_their_contents() -> None:
    y = np.array([[1.5, 2]], dtype="<f4")
    half = np.array([0.5], dtype="<f2")
    bf16 = dtypes.float_to_bf16_bits(np.array([1.5, -3], dtype="<f4"))
    answer = result(FP32_y=y, FP16_h=half, UINT16_bf=bf16, INT64_n=np.array([7], dtype="<i8"))
    body = parse(
        {
            "inputs": [tensor(data=[1, 2, 3, 4])],
            "outputs": [
                {"name": "UINT16_bf", "parameters": {"binary_data": False}},
                {"name": "FP32_y", "parameters": {"binary_data": True}},
                {"name": "FP16_h"},
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    parts, length = infer_response("m", answer, body)
    assert length == len(parts[0])
    document = json.loads(parts[0])
    assert "id" not in document
    assert [output["name"] for output in document["outputs"]] == ["UINT16_bf", "FP32_y", "FP16_h"]
    bf, y_out, h_out = document["outputs"]
    assert bf == {"name": "UINT16_bf", "datatype": "BF16", "shape": [2], "data": [1.5, -3.0]}
    assert y_out == {"name": "FP32_y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert h_out["parameters"] == {"binary_data_size": 2} and "data" not in h_out
    assert b"".join(bytes(part) for part in parts[1:]) == y.tobytes() + half.tobytes()


def test_a_binary_body_holds_its_json_header_at_the_json_factor_and_its_tensors_once() -> None:
    admission = Admission(1 << 30)
    infer = "/v2/models/m/infer"
    held = _held(admission, {"path": infer, "headers": [(b"Inference-Header-Content-Length", b"100")]})
    held.grow(60)
    held.grow(1000)
    assert held.nbytes == 100 * JSON_BODY_FACTOR + 960
    plain = _held(admission, {"path": infer, "headers": [(b"content-type", b"application/json")]})
    plain.grow(1060)
    assert plain.nbytes == 1060 * JSON_BODY_FACTOR
    lying = _held(admission, {"path": infer, "headers": [(b"inference-header-content-length", b"99999999")]})
    lying.grow(1060)
    assert lying.nbytes == 1060 * JSON_BODY_FACTOR
    typed = [(b"content-type", b"application/octet-stream"), (b"inference-header-content-length", b"10")]
    raw = _held(admission, {"path": infer, "headers": typed})
    raw.grow(1060)
    assert raw.nbytes == 10 * JSON_BODY_FACTOR + 1050
    for each in (held, plain, lying, raw):
        each.release()


@pytest.mark.parametrize(
    ("path", "header", "factor"),
    [
        ("/v1/jobs", (b"content-type", b"application/octet-stream"), 1),
        ("/v1/models/m:predict", (b"content-type", b"application/octet-stream"), JSON_BODY_FACTOR),
        ("/v2/models/m/infer", (b"content-type", b"application/x-npz"), JSON_BODY_FACTOR),
        ("/v1/models/m:predict", (b"inference-header-content-length", b"1"), JSON_BODY_FACTOR),
        ("/v2/repository/index", (b"inference-header-content-length", b"1"), JSON_BODY_FACTOR),
    ],
)
def test_headers_lower_the_json_count_only_where_the_route_honours_them(
    path: str, header: tuple[bytes, bytes], factor: int
) -> None:
    held = _held(Admission(1 << 30), {"path": path, "headers": [header]})
    held.grow(1000)
    assert held.nbytes == 1000 * factor
    held.release()


def test_a_parsed_body_holds_its_lists_objects_and_strings_beyond_the_factor() -> None:
    held = _held(Admission(1 << 30), {"path": "/v2/models/m/infer", "headers": []})
    body = b'{"a": [[], [], "x"]}'
    held.grow(len(body))
    held.parsed(body)
    assert held.nbytes == len(body) * JSON_BODY_FACTOR + 4 * JSON_CONTAINER_BYTES + 4 * JSON_QUOTE_BYTES
    held.release()
