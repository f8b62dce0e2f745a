"""v2 tensors <-> the data plane's, for both v2 frontends: shapes, raw tensor contents (REST's binary
extension, gRPC's raw_input_contents / raw_output_contents) and BYTES elements.

Raw contents are little-endian elements, row-major, as Triton lays them out; a BYTES tensor's raw
content is each element as a 4-byte little-endian length followed by its bytes. Every length is
checked against the bytes actually there before anything is sliced or allocated. A BYTES tensor is
handed on as `RequestTensor(precision="BYTES", shape=<as sent>, values=<flat object array of bytes>)`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from api.kserve.datatypes import BYTES, datatype_of
from inference import dtypes
from inference.errors import InvalidArgument
from inference.validation import MAX_ELEMENTS, MAX_RANK, RequestTensor

# Elements of one BYTES tensor (each a Python object of ~40 bytes beside its data: 65,536 of them take
# ~3 MB however short they are). Encoded images come one per batch row, far fewer.
MAX_BYTES_ELEMENTS = 1 << 16
_LENGTH = struct.Struct("<I")


def tensor_shape(value: Any, where: str) -> tuple[int, ...]:
    """A tensor's `shape` as sent (a JSON list or a protobuf repeated field): at most MAX_RANK non-negative
    integers holding at most MAX_ELEMENTS elements. `where` names the tensor in messages ("input x")."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        or len(value) > MAX_RANK  # before the dimensions are looked at: there may be millions
        or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value)
    ):
        raise InvalidArgument(f"Unable to parse 'shape' of {where}: a list of at most {MAX_RANK} non-negative integers")
    shape = tuple(value)
    if any(dim > MAX_ELEMENTS for dim in shape) or math.prod(shape) > MAX_ELEMENTS:  # [0, 2**62] holds 0
        raise InvalidArgument(f"Invalid 'shape' of {where}: {list(shape)} exceeds {MAX_ELEMENTS} elements")
    return shape


def raw_tensor(precision: str, shape: tuple[int, ...], raw: bytes | memoryview, where: str) -> RequestTensor:
    """A tensor from its raw content (not copied, except BYTES elements, each its own bytes object);
    `shape` as tensor_shape gives it."""
    count = math.prod(shape)
    if precision == BYTES:
        return RequestTensor(BYTES, shape, values=bytes_elements(raw, count, where))
    expected = count * dtypes.by_name(precision).numpy.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"Invalid data size of {where}: shape {list(shape)} of {datatype_of(precision)} takes {expected} bytes; "
            f"got {len(raw)}"
        )
    return RequestTensor(precision, shape, content=raw)


def bytes_tensor(shape: tuple[int, ...], elements: Sequence[bytes], where: str) -> RequestTensor:
    """A BYTES tensor from its elements already apart (JSON strings, gRPC bytes_contents), as many as the
    shape holds; `shape` as tensor_shape gives it."""
    count = math.prod(shape)
    check_bytes_count(count, where)
    if len(elements) != count:
        raise InvalidArgument(
            f"Invalid data of {where}: shape {list(shape)} holds {count} BYTES elements; {len(elements)} given"
        )
    values = np.empty(count, dtype=object)
    values[:] = list(elements)  # element-wise: np.array would make a fixed-width bytes array of them
    return RequestTensor(BYTES, shape, values=values)


def bytes_elements(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """`count` BYTES elements from their serialization: an object array of bytes. A length reaching past
    the end, a cut length, or bytes left over is INVALID_ARGUMENT."""
    check_bytes_count(count, where)
    view = memoryview(raw)
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if len(view) - offset < _LENGTH.size:
            raise InvalidArgument(
                f"Invalid BYTES data of {where}: element {index} of {count} has no 4-byte length "
                f"({len(view) - offset} bytes left)"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > len(view) - offset:
            raise InvalidArgument(
                f"Invalid BYTES data of {where}: element {index} claims {length} bytes; {len(view) - offset} are left"
            )
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgument(
            f"Invalid BYTES data of {where}: {len(view) - offset} bytes after the last of {count} elements"
        )
    return elements


def check_bytes_count(count: int, where: str) -> None:
    """Checked before any element is made."""
    if count > MAX_BYTES_ELEMENTS:
        raise InvalidArgument(
            f"Invalid 'shape' of {where}: {count} BYTES elements exceed the limit of {MAX_BYTES_ELEMENTS}"
        )


def raw_output(array: np.ndarray) -> memoryview:
    """An output's raw content, without a copy when its array is contiguous (BF16: its 16-bit patterns)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def output_values(array: np.ndarray, precision: str) -> list[Any]:
    """An output's elements as a flat list of JSON values (BF16 as the floats it holds)."""
    if precision == "BF16":
        array = dtypes.bf16_bits_to_float(array)
    return array.reshape(-1).tolist()
