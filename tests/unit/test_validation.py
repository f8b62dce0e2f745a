"""validate_inputs: the seed's messages, the order the seed checks in, auto batch/shape, and JSON value casting."""

from __future__ import annotations

import numpy as np
import pytest

from inference import dtypes
from inference.errors import InvalidArgument
from inference.signature import DYNAMIC, ModelSignature, TensorSpec
from inference.validation import MAX_ELEMENTS, MAX_RANK, RequestTensor, validate_inputs

IMAGE = (1, 3, 224, 224)


def signature(*specs: TensorSpec, auto_batch: bool = False) -> ModelSignature:
    outputs = {"out": TensorSpec("out", "FP32", (DYNAMIC,))}
    return ModelSignature({spec.name: spec for spec in specs}, outputs, auto_batch=auto_batch)


def resnet(auto_batch: bool = False, auto_shape: bool = False) -> ModelSignature:
    return signature(TensorSpec("data", "FP32", IMAGE, auto_shape=auto_shape), auto_batch=auto_batch)


def raw(shape: tuple[int, ...], precision: str = "FP32", nbytes: int | None = None) -> RequestTensor:
    """A gRPC-style tensor: typed, with `tensor_content` of the right size unless `nbytes` says otherwise."""
    itemsize = dtypes.by_name(precision).numpy.itemsize if precision in dtypes.BY_NAME else 4
    size = int(np.prod(shape)) * itemsize if nbytes is None else nbytes
    return RequestTensor(precision, shape, content=bytes(size))


def json_values(values: object) -> RequestTensor:
    """A REST-style tensor: untyped numbers as numpy parsed them from JSON."""
    array = np.array(values)
    return RequestTensor(None, array.shape, values=array)


def rejection(sig: ModelSignature, inputs: dict[str, RequestTensor]) -> str:
    with pytest.raises(InvalidArgument) as error:
        validate_inputs(sig, inputs)
    return error.value.message


# --------------------------------------------------------------------------- each message


def test_valid_raw_content_becomes_arrays_of_the_model_type() -> None:
    content = np.arange(np.prod(IMAGE), dtype="<f4").tobytes()
    arrays = validate_inputs(resnet(), {"data": RequestTensor("FP32", IMAGE, content=content)})
    assert list(arrays) == ["data"]
    assert arrays["data"].dtype == np.float32
    assert arrays["data"].shape == IMAGE
    assert arrays["data"][0, 2, 223, 223] == np.prod(IMAGE) - 1


def test_invalid_number_of_inputs() -> None:
    inputs = {"data": raw(IMAGE), "extra": raw(IMAGE)}
    assert rejection(resnet(), inputs) == "Invalid number of inputs - Expected: 1; Actual: 2"
    assert rejection(resnet(), {}) == "Invalid number of inputs - Expected: 1; Actual: 0"


def test_missing_input_with_specific_name() -> None:
    assert rejection(resnet(), {"input": raw(IMAGE)}) == "Missing input with specific name - Required input: data"


def test_invalid_input_precision() -> None:
    assert rejection(resnet(), {"data": raw(IMAGE, "I32")}) == "Invalid input precision - Expected: FP32; Actual: I32"


def test_unserved_precision_is_named() -> None:
    assert rejection(resnet(), {"data": raw(IMAGE, "STRING")}) == (
        "Invalid input precision - Expected: FP32; Actual: STRING"
    )


def test_invalid_number_of_shape_dimensions() -> None:
    assert rejection(resnet(), {"data": raw((3, 224, 224))}) == (
        "Invalid number of shape dimensions - Expected: (1,3,224,224); Actual: (3,224,224)"
    )


def test_invalid_input_batch_size() -> None:
    assert rejection(resnet(), {"data": raw((8, 3, 224, 224))}) == "Invalid input batch size - Expected: 1; Actual: 8"


def test_invalid_input_shape() -> None:
    sig = signature(TensorSpec("data", "FP32", (1, 3, 600, 600)))
    assert rejection(sig, {"data": raw((1, 3, 300, 300))}) == (
        "Invalid input shape - Expected: (1,3,600,600); Actual: (1,3,300,300)"
    )


def test_invalid_content_size() -> None:
    assert rejection(resnet(), {"data": raw(IMAGE, nbytes=0)}) == (
        "Invalid content size of tensor proto - Expected: 602112 bytes; Actual: 0 bytes"
    )
    assert rejection(resnet(), {"data": raw(IMAGE, nbytes=602116)}) == (
        "Invalid content size of tensor proto - Expected: 602112 bytes; Actual: 602116 bytes"
    )


def test_too_few_values_are_a_content_size_error() -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 4)))
    tensor = RequestTensor(None, (2, 4), values=np.zeros(4))
    assert rejection(sig, {"x": tensor}) == (
        "Invalid content size of tensor proto - Expected: 32 bytes; Actual: 16 bytes"
    )


def test_dynamic_dimensions_accept_any_size() -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 4, DYNAMIC)))
    arrays = validate_inputs(sig, {"x": raw((5, 4, 7))})
    assert arrays["x"].shape == (5, 4, 7)
    assert rejection(sig, {"x": raw((5, 3, 7))}) == "Invalid input shape - Expected: (-1,4,-1); Actual: (5,3,7)"


# --------------------------------------------------------------------------- the order of the checks


def test_count_is_checked_before_names() -> None:
    inputs = {"wrong": raw((3,), "I8"), "other": raw((3,), "I8")}
    assert rejection(resnet(), inputs) == "Invalid number of inputs - Expected: 1; Actual: 2"


def test_name_is_checked_before_precision_and_shape() -> None:
    sig = signature(TensorSpec("a", "FP32", (1, 2)), TensorSpec("b", "FP32", (1, 2)))
    inputs = {"c": raw((9, 9, 9), "I8"), "b": raw((9,), "I64")}
    assert rejection(sig, inputs) == "Missing input with specific name - Required input: a"


def test_precision_is_checked_before_rank() -> None:
    assert rejection(resnet(), {"data": raw((3, 224), "I32")}) == (
        "Invalid input precision - Expected: FP32; Actual: I32"
    )


def test_rank_is_checked_before_batch() -> None:
    assert rejection(resnet(), {"data": raw((8, 3, 224))}) == (
        "Invalid number of shape dimensions - Expected: (1,3,224,224); Actual: (8,3,224)"
    )


def test_batch_is_checked_before_shape() -> None:
    assert rejection(resnet(), {"data": raw((8, 3, 300, 300))}) == "Invalid input batch size - Expected: 1; Actual: 8"


def test_shape_is_checked_before_content_size() -> None:
    assert rejection(resnet(), {"data": raw((1, 3, 300, 300), nbytes=0)}) == (
        "Invalid input shape - Expected: (1,3,224,224); Actual: (1,3,300,300)"
    )


def test_inputs_are_checked_in_signature_order() -> None:
    sig = signature(TensorSpec("a", "FP32", (1, 2)), TensorSpec("b", "I32", (1, 2)))
    inputs = {"b": raw((1, 2), "FP32"), "a": raw((1, 5))}
    assert rejection(sig, inputs) == "Invalid input shape - Expected: (1,2); Actual: (1,5)"


# --------------------------------------------------------------------------- auto batch and auto shape


def test_auto_batch_skips_only_the_batch_check() -> None:
    sig = resnet(auto_batch=True)
    assert validate_inputs(sig, {"data": raw((8, 3, 224, 224))})["data"].shape == (8, 3, 224, 224)
    assert rejection(sig, {"data": raw((8, 3, 300, 300))}) == (
        "Invalid input shape - Expected: (1,3,224,224); Actual: (8,3,300,300)"
    )
    assert rejection(sig, {"data": raw((3, 224, 224))}).startswith("Invalid number of shape dimensions")
    assert rejection(sig, {"data": raw((8, 3, 224, 224), "FP16")}).startswith("Invalid input precision")
    assert rejection(sig, {"data": raw((8, 3, 224, 224), nbytes=4)}).startswith("Invalid content size")


def test_auto_shape_skips_rank_batch_and_shape_checks() -> None:
    sig = resnet(auto_shape=True)
    for shape in [(2, 3, 300, 300), (1, 3, 600), (5,)]:
        assert validate_inputs(sig, {"data": raw(shape)})["data"].shape == shape
    assert rejection(sig, {"data": raw((2, 3, 300, 300), "I32")}).startswith("Invalid input precision")
    assert rejection(sig, {"data": raw((2, 3), nbytes=8)}) == (
        "Invalid content size of tensor proto - Expected: 24 bytes; Actual: 8 bytes"
    )


def test_auto_shape_applies_per_input() -> None:
    sig = signature(TensorSpec("free", "FP32", (1, 2), auto_shape=True), TensorSpec("fixed", "FP32", (1, 2)))
    arrays = validate_inputs(sig, {"free": raw((1, 4, 4)), "fixed": raw((1, 2))})
    assert arrays["free"].shape == (1, 4, 4)
    assert rejection(sig, {"free": raw((4, 4)), "fixed": raw((4, 4))}) == (
        "Invalid input batch size - Expected: 1; Actual: 4"
    )


@pytest.mark.parametrize("sig", [resnet(), resnet(auto_batch=True), resnet(auto_shape=True)])
def test_negative_dimensions_are_rejected(sig: ModelSignature) -> None:
    assert rejection(sig, {"data": raw((-1, 3, 224, 224), nbytes=0)}) == (
        "Invalid input shape - negative dimension in (-1,3,224,224)"
    )


def test_huge_shapes_are_rejected_before_allocating() -> None:
    sig = resnet(auto_shape=True)
    shape = (MAX_ELEMENTS, 2)
    assert rejection(sig, {"data": raw(shape, nbytes=0)}) == (
        f"Invalid input shape - ({MAX_ELEMENTS},2) exceeds {MAX_ELEMENTS} elements"
    )


def test_empty_batch_is_valid_for_a_dynamic_dimension() -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 4)))
    assert validate_inputs(sig, {"x": raw((0, 4))})["x"].shape == (0, 4)


# --------------------------------------------------------------------------- JSON values


def test_json_integers_are_cast_to_float_inputs() -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 3)))
    array = validate_inputs(sig, {"x": json_values([[1, 2, 3], [-4, 0, 16]])})["x"]
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[1, 2, 3], [-4, 0, 16]])


def test_json_floats_are_cast_to_the_model_float_type() -> None:
    sig = signature(TensorSpec("x", "FP16", (DYNAMIC, 2)), TensorSpec("y", "FP64", (DYNAMIC, 2)))
    arrays = validate_inputs(sig, {"x": json_values([[0.5, -2.25]]), "y": json_values([[0.1, 1e-300]])})
    assert arrays["x"].dtype == np.float16
    assert arrays["x"].tolist() == [[0.5, -2.25]]
    assert arrays["y"].dtype == np.float64
    assert arrays["y"].tolist() == [[0.1, 1e-300]]


def test_json_booleans_and_integral_floats_are_accepted_for_integer_inputs() -> None:
    sig = signature(TensorSpec("i", "I32", (DYNAMIC, 2)), TensorSpec("b", "BOOL", (DYNAMIC, 2)))
    arrays = validate_inputs(sig, {"i": json_values([[3.0, -7.0]]), "b": json_values([[True, False]])})
    assert arrays["i"].dtype == np.int32
    assert arrays["i"].tolist() == [[3, -7]]
    assert arrays["b"].dtype == np.bool_
    assert arrays["b"].tolist() == [[True, False]]


@pytest.mark.parametrize("precision", ["I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "BOOL"])
def test_fractional_floats_are_rejected_for_integer_inputs(precision: str) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    assert rejection(sig, {"x": json_values([[1.0, 2.5]])}) == (
        f"Invalid input precision - Expected: {precision}; Actual: fractional values"
    )


@pytest.mark.parametrize(
    ("precision", "value"),
    [("I8", 128), ("I8", -129), ("U8", 256), ("U8", -1), ("I16", 2**15), ("U16", 2**16), ("I32", 2**31)],
)
def test_integers_out_of_range_are_rejected(precision: str, value: int) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    assert rejection(sig, {"x": json_values([[0, value]])}) == (
        f"Invalid input precision - Expected: {precision}; Actual: values out of range"
    )


@pytest.mark.parametrize(("precision", "low", "high"), [("I8", -128, 127), ("U8", 0, 255), ("U16", 0, 65535)])
def test_integers_at_the_limits_are_accepted(precision: str, low: int, high: int) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    assert validate_inputs(sig, {"x": json_values([[low, high]])})["x"].tolist() == [[low, high]]


@pytest.mark.parametrize("values", [[["a", "b"]], [["1", "2"]], [[1, "2"]]])
def test_strings_are_rejected_for_numeric_inputs(values: object) -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 2)))
    assert rejection(sig, {"x": json_values(values)}) == (
        "Invalid input precision - Expected: FP32; Actual: non-numeric values"
    )


def test_json_floats_for_bf16_inputs_become_bf16_bit_patterns() -> None:
    sig = signature(TensorSpec("x", "BF16", (DYNAMIC, 3)))
    array = validate_inputs(sig, {"x": json_values([[1.0, -2.5, 0.15625]])})["x"]
    assert array.dtype == np.uint16
    assert array.tolist() == [[0x3F80, 0xC020, 0x3E20]]


def test_values_of_the_model_type_pass_through_unchanged() -> None:
    sig = signature(TensorSpec("x", "I64", (DYNAMIC, 2)))
    values = np.array([[2**31 - 1, -(2**31)]], dtype=np.int64)
    array = validate_inputs(sig, {"x": RequestTensor("I64", (1, 2), values=values)})["x"]
    assert array.dtype == np.int64
    assert array.tolist() == [[2**31 - 1, -(2**31)]]


def test_json_values_are_reshaped_to_the_request_shape() -> None:
    sig = signature(TensorSpec("x", "FP32", (DYNAMIC, 2, 2)))
    tensor = RequestTensor(None, (1, 2, 2), values=np.array([1, 2, 3, 4]))
    assert validate_inputs(sig, {"x": tensor})["x"].tolist() == [[[1, 2], [3, 4]]]


# --------------------------------------------------------------------------- limits on what a client claims


def test_too_many_dimensions_are_rejected_before_quoting_them() -> None:
    sig = resnet(auto_shape=True)
    assert rejection(sig, {"data": raw((1,) * 10_000)}) == (
        f"Invalid input shape - 10000 dimensions exceed the limit of {MAX_RANK}"
    )
    assert validate_inputs(sig, {"data": raw((1,) * MAX_RANK)})["data"].ndim == MAX_RANK


def test_a_huge_dimension_beside_a_zero_is_rejected() -> None:
    """(0, 2**62) holds no element, but no array of that shape can exist: a 400, not numpy's ValueError."""
    message = rejection(resnet(auto_shape=True), {"data": raw((0, 2**62), nbytes=0)})
    assert message == f"Invalid input shape - (0,{2**62}) exceeds {MAX_ELEMENTS} elements"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("precision", ["I32", "U8", "BOOL"])
def test_nan_and_infinity_are_rejected_for_integer_and_bool_inputs(precision: str, value: float) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    assert rejection(sig, {"x": json_values([[1.0, value]])}) == (
        f"Invalid input precision - Expected: {precision}; Actual: NaN or infinite values"
    )


@pytest.mark.parametrize("precision", ["FP32", "FP16", "FP64", "BF16"])
def test_nan_and_infinity_pass_to_float_inputs(precision: str) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 3)))
    array = validate_inputs(sig, {"x": json_values([[float("nan"), float("inf"), float("-inf")]])})["x"]
    floats = dtypes.bf16_bits_to_float(array) if precision == "BF16" else array
    assert np.isnan(floats[0, 0]) and floats[0, 1] == np.inf and floats[0, 2] == -np.inf


# --------------------------------------------------------------------------- one batch dimension per request


def pair(auto_shape: bool = False, shared_batch: bool = True) -> ModelSignature:
    specs = [TensorSpec(name, "FP32", (DYNAMIC, 2), auto_shape=auto_shape) for name in ("a", "b")]
    outputs = {"sum": TensorSpec("sum", "FP32", (DYNAMIC, 2))}
    return ModelSignature({spec.name: spec for spec in specs}, outputs, shared_batch=shared_batch)


@pytest.mark.parametrize(
    "sig", [pair(), pair().with_any_batch(), pair(auto_shape=True)], ids=["predict", "job", "auto_shape"]
)
@pytest.mark.parametrize(("rows_a", "rows_b"), [(1, 0), (0, 1), (2, 1), (1, 3)])
def test_inputs_must_agree_on_the_batch_size(sig: ModelSignature, rows_a: int, rows_b: int) -> None:
    """Rows of one request are split back by position: inputs that disagree would mix clients' rows."""
    assert rejection(sig, {"a": raw((rows_a, 2)), "b": raw((rows_b, 2))}) == (
        "Invalid input batch size - every input must have the same batch size (first dimension); "
        f"Actual: a: {rows_a}, b: {rows_b}"
    )


@pytest.mark.parametrize("rows", [0, 1, 5])
def test_inputs_agreeing_on_the_batch_size_are_accepted(rows: int) -> None:
    arrays = validate_inputs(pair().with_any_batch(), {"a": raw((rows, 2)), "b": raw((rows, 2))})
    assert arrays["a"].shape == arrays["b"].shape == (rows, 2)


def test_an_auto_shape_input_without_a_batch_dimension_is_rejected() -> None:
    assert rejection(pair(auto_shape=True), {"a": raw((1, 2)), "b": raw(())}) == (
        "Invalid input batch size - every input must have the same batch size (first dimension); Actual: a: 1, b: none"
    )


def test_inputs_of_a_model_without_a_shared_batch_dimension_may_differ() -> None:
    """e.g. images [N,3,H,W] beside a per-channel scale [3]: the model is never batched."""
    arrays = validate_inputs(pair(shared_batch=False), {"a": raw((1, 2)), "b": raw((3, 2))})
    assert arrays["b"].shape == (3, 2)


def test_the_shared_batch_setting_travels_with_the_signature() -> None:
    for sig in [pair(), pair(shared_batch=False)]:
        assert ModelSignature.from_dict(sig.to_dict()) == sig
        assert sig.with_any_batch().shared_batch == sig.shared_batch


# --------------------------------------------------------------------------- what OpenVINO computes exactly

# OpenVINO's CPU plugin runs I64, U64 and U32 as 32-bit signed integers: [[2**40+5, -2**33]] came back [[5, 0]].
I32_MIN, I32_MAX = -(2**31), 2**31 - 1


@pytest.mark.parametrize(
    ("precision", "value"),
    [
        ("I64", 2**40 + 5),
        ("I64", -(2**33)),
        ("I64", I32_MAX + 1),
        ("I64", I32_MIN - 1),
        ("I64", 2**63 - 1),
        ("U64", I32_MAX + 1),
        ("U64", 2**64 - 1),
        ("U32", I32_MAX + 1),
        ("U32", 2**32 - 1),
    ],
)
@pytest.mark.parametrize("form", ["json", "content", "typed"])
def test_wide_integers_beyond_what_openvino_computes_are_rejected(precision: str, value: int, form: str) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    array = np.array([[1, value]], dtype=dtypes.by_name(precision).numpy)
    tensor = {
        "json": json_values([[1, value]]),
        "content": RequestTensor(precision, (1, 2), content=array.tobytes()),
        "typed": RequestTensor(precision, (1, 2), values=array),
    }[form]
    low = I32_MIN if precision == "I64" else 0
    shown = tensor.values.ravel()[1] if form == "json" else value  # 2**64 - 1 is a float in JSON-parsed values
    assert rejection(sig, {"x": tensor}) == (
        f"Invalid input values - {precision} input x holds {shown}, outside {low}..{I32_MAX}: "
        f"OpenVINO computes {precision} as 32-bit integers"
    )


@pytest.mark.parametrize(("precision", "low"), [("I64", I32_MIN), ("U64", 0), ("U32", 0)])
def test_wide_integers_within_what_openvino_computes_are_accepted(precision: str, low: int) -> None:
    sig = signature(TensorSpec("x", precision, (DYNAMIC, 2)))
    assert validate_inputs(sig, {"x": json_values([[low, I32_MAX]])})["x"].tolist() == [[low, I32_MAX]]
    empty = RequestTensor(precision, (0, 2), content=b"")
    assert validate_inputs(sig, {"x": empty})["x"].shape == (0, 2)


@pytest.mark.parametrize("value", [1e300, -1e39, 2.0**128])
@pytest.mark.parametrize("form", ["json", "content"])
def test_fp64_beyond_what_openvino_computes_is_rejected(value: float, form: str) -> None:
    """The CPU plugin computes FP64 as FP32: 1e300 came back as 3.4e38."""
    sig = signature(TensorSpec("x", "FP64", (DYNAMIC, 2)))
    array = np.array([[1.5, value]])
    tensor = json_values(array) if form == "json" else RequestTensor("FP64", (1, 2), content=array.tobytes())
    assert rejection(sig, {"x": tensor}) == (
        f"Invalid input values - FP64 input x holds {np.float64(value)}, outside -3.40282e+38..3.40282e+38: "
        "OpenVINO computes FP64 as 32-bit floats"
    )


def test_fp64_within_what_openvino_computes_is_accepted() -> None:
    sig = signature(TensorSpec("x", "FP64", (DYNAMIC, 4)))
    values = [[3.4e38, -3.4e38, np.inf, 1e-300]]
    assert validate_inputs(sig, {"x": json_values(values)})["x"].tolist() == values
