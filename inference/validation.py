"""Request validation against a model signature, with the seed's messages in the seed's order."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from inference import dtypes
from inference.bytes_tensors import BYTES
from inference.errors import InvalidArgument
from inference.images import image_batch
from inference.signature import DYNAMIC, MAX_ELEMENTS, MAX_RANK, ModelSignature, TensorSpec, format_shape


@dataclass
class RequestTensor:
    """A tensor as a client sent it, before it is checked against the model.

    Exactly one of `content` (raw little-endian bytes) or `values` (already decoded numbers) is set.
    `precision` is None when the protocol carries no type (REST JSON): the model's type is used.
    Encoded images are precision BYTES, shape (N,) as sent, and `values` an object array of N `bytes`
    (inference.images); what validation returns for them is that array, decoded on the worker.
    """

    precision: str | None
    shape: tuple[int, ...]
    content: bytes | memoryview | None = None
    values: np.ndarray | None = None


def validate_inputs(signature: ModelSignature, inputs: dict[str, RequestTensor]) -> dict[str, np.ndarray]:
    """Check every input and return them as arrays of the model's types and the requested shapes."""
    if len(inputs) != len(signature.inputs):
        raise InvalidArgument(f"Invalid number of inputs - Expected: {len(signature.inputs)}; Actual: {len(inputs)}")
    arrays = {}
    for name, spec in signature.inputs.items():
        tensor = inputs.get(name)
        if tensor is None:
            raise InvalidArgument(f"Missing input with specific name - Required input: {name}")
        arrays[name] = _validate_tensor(spec, tensor, signature.auto_batch)
    if signature.shared_batch:
        batch_rows({name: array.shape for name, array in arrays.items()})
    return arrays


def batch_rows(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The batch size every input of one request shares (their first dimension).

    Batched requests are concatenated and their outputs split back by rows, so inputs that disagree
    would take or give rows of other clients' requests: they are refused.
    """
    sizes = {name: shape[0] if shape else None for name, shape in shapes.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        actual = ", ".join(f"{name}: {'none' if size is None else size}" for name, size in sizes.items())
        raise InvalidArgument(
            f"Invalid input batch size - every input must have the same batch size (first dimension); Actual: {actual}"
        )
    return int(next(iter(sizes.values())))


def _validate_tensor(spec: TensorSpec, tensor: RequestTensor, auto_batch: bool) -> np.ndarray:
    if tensor.precision == BYTES:
        _check_limits(tensor.shape)
        return image_batch(spec, tensor.shape, tensor.values, auto_batch).images
    if tensor.precision is not None and tensor.precision != spec.precision:
        raise InvalidArgument(f"Invalid input precision - Expected: {spec.precision}; Actual: {tensor.precision}")
    _check_shape(spec, tensor.shape, auto_batch)
    return _to_array(spec, tensor)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], auto_batch: bool) -> None:
    """Limits first, then the seed's checks."""
    _check_limits(shape)
    if spec.auto_shape:
        return
    expected = spec.shape
    if len(shape) != len(expected):
        raise InvalidArgument(
            f"Invalid number of shape dimensions - Expected: {format_shape(expected)}; Actual: {format_shape(shape)}"
        )
    if expected and not auto_batch and expected[0] not in (DYNAMIC, shape[0]):
        raise InvalidArgument(f"Invalid input batch size - Expected: {expected[0]}; Actual: {shape[0]}")
    if any(want not in (DYNAMIC, got) for want, got in zip(expected[1:], shape[1:], strict=False)):
        raise InvalidArgument(
            f"Invalid input shape - Expected: {format_shape(expected)}; Actual: {format_shape(shape)}"
        )


def _check_limits(shape: tuple[int, ...]) -> None:
    """A claimed shape allocates nothing, and a message quotes at most MAX_RANK dimensions."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"Invalid input shape - {len(shape)} dimensions exceed the limit of {MAX_RANK}")
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(f"Invalid input shape - negative dimension in {format_shape(shape)}")
    if math.prod(shape) > MAX_ELEMENTS or any(dim > MAX_ELEMENTS for dim in shape):  # (0, 2**62) holds 0
        raise InvalidArgument(f"Invalid input shape - {format_shape(shape)} exceeds {MAX_ELEMENTS} elements")


def _to_array(spec: TensorSpec, tensor: RequestTensor) -> np.ndarray:
    dtype = dtypes.by_name(spec.precision).numpy
    count = math.prod(tensor.shape)
    if tensor.content is not None:
        expected_bytes = count * dtype.itemsize
        if len(tensor.content) != expected_bytes:
            raise InvalidArgument(
                "Invalid content size of tensor proto - "
                f"Expected: {expected_bytes} bytes; Actual: {len(tensor.content)} bytes"
            )
        array = np.frombuffer(tensor.content, dtype=dtype).reshape(tensor.shape)
        _check_computed_range(spec, array)
        return array
    values = tensor.values
    if values is None or values.size != count:
        actual = 0 if values is None else values.size
        raise InvalidArgument(
            "Invalid content size of tensor proto - "
            f"Expected: {count * dtype.itemsize} bytes; Actual: {actual * dtype.itemsize} bytes"
        )
    return _cast(values, dtype, spec).reshape(tensor.shape)


def _check_computed_range(spec: TensorSpec, values: np.ndarray) -> None:
    """Refuse values OpenVINO would silently cut to 32 bits (see dtypes.Precision.computed_range)."""
    computed = dtypes.by_name(spec.precision).computed_range
    if computed is None or not values.size:
        return
    low, high = computed
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]  # NaN and infinities pass through 32 bits unchanged
    outside = values[(values < low) | (values > high)]
    if outside.size:
        kind = "floats" if dtypes.by_name(spec.precision).numpy.kind == "f" else "integers"
        raise InvalidArgument(
            f"Invalid input values - {spec.precision} input {spec.name} holds {outside.flat[0]}, "
            f"outside {_number(low)}..{_number(high)}: OpenVINO computes {spec.precision} as 32-bit {kind}"
        )


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 2**53 else f"{bound:g}"


def _cast(values: np.ndarray, dtype: np.dtype, spec: TensorSpec) -> np.ndarray:
    if values.dtype == dtype:
        _check_computed_range(spec, values)
        return values
    if values.dtype.kind not in "biuf":
        raise InvalidArgument(f"Invalid input precision - Expected: {spec.precision}; Actual: non-numeric values")
    if spec.precision == "BF16":  # stored as uint16 bit patterns, but a float type: before the integer checks
        return dtypes.float_to_bf16_bits(values)
    if dtype.kind in "iub" and values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidArgument(f"Invalid input precision - Expected: {spec.precision}; Actual: NaN or infinite values")
    if dtype.kind in "iub" and values.dtype.kind == "f" and not np.array_equal(values, np.trunc(values)):
        raise InvalidArgument(f"Invalid input precision - Expected: {spec.precision}; Actual: fractional values")
    _check_computed_range(spec, values)  # before the cast: 2**64 - 1 read from JSON as a float would wrap
    if dtype.kind in "iu" and values.size:  # astype would wrap silently: 300 as U8 becomes 44
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InvalidArgument(f"Invalid input precision - Expected: {spec.precision}; Actual: values out of range")
    with np.errstate(all="ignore"):
        return values.astype(dtype)
