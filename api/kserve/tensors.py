"""v2 tensors <-> the data plane's, for both v2 frontends: shapes, raw tensor contents (REST's binary
extension, gRPC's raw_input_contents / raw_output_contents) and BYTES elements.

Raw contents are little-endian elements, row-major, as Triton lays them out; a BYTES tensor's raw
content is each element as a 4-byte little-endian length followed by its bytes. Every length is
checked against the bytes actually there before anything is sliced or allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from api.kserve.datatypes import BYTES, precision_of
from inference import dtypes
from inference.errors import InvalidArgument
from inference.validation import MAX_ELEMENTS, MAX_RANK, RequestTensor

# BYTES elements become one Python object each (~40 bytes beside their content): far above any batch of
# encoded images, far below what a body of 4-byte empty elements could otherwise make the api allocate
MAX_BYTES_ELEMENTS = 1 << 20
_LENGTH = struct.Struct("<I")


def tensor_shape(value: Any, where: str) -> tuple[int, ...]:
    """A tensor's `shape` as sent: at most MAX_RANK non-negative integers holding at most MAX_ELEMENTS
    elements. `where` names the tensor in messages ("input x")."""
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str | bytes)
        or len(value) > MAX_RANK
        or not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value)
    ):
        raise InvalidArgument(f"Unable to parse 'shape' of {where}: a list of at most {MAX_RANK} non-negative integers")
    shape = tuple(value)
    if any(dim > MAX_ELEMENTS for dim in shape) or math.prod(shape) > MAX_ELEMENTS:  # [0, 2**62] holds 0
        raise InvalidArgument(f"Invalid 'shape' of {where}: {list(shape)} exceeds {MAX_ELEMENTS} elements")
    return shape


def raw_tensor(datatype: str, shape: tuple[int, ...], raw: bytes | memoryview, where: str) -> RequestTensor:
    """A tensor from its raw content (not copied, except BYTES elements, each its own bytes object)."""
    precision = precision_of(datatype)
    count = math.prod(shape)
    if precision == BYTES:
        return RequestTensor(BYTES, shape, values=bytes_elements(raw, count, where))
    expected = count * dtypes.by_name(precision).numpy.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"Invalid data size of {where}: shape {list(shape)} of {datatype} takes {expected} bytes; got {len(raw)}"
        )
    return RequestTensor(precision, shape, content=raw)


def bytes_elements(raw: bytes | memoryview, count: int, where: str) -> np.ndarray:
    """`count` BYTES elements from their serialization: an object array of bytes."""
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
