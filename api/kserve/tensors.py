"""v2 input tensors as the data plane takes them (inference.validation.RequestTensor), whatever frontend
received them: raw little-endian contents, and BYTES tensors, whose elements travel raw as a 4-byte
little-endian length before each element's bytes.

A BYTES tensor is handed on as `RequestTensor(precision="BYTES", shape=<as sent>, values=<flat object
array of bytes>)`; its element count is checked against the shape here, since its elements must be split
before anything else can look at them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from api.kserve.datatypes import BYTES
from inference.errors import InvalidArgument
from inference.signature import format_shape
from inference.validation import MAX_RANK, RequestTensor

# Elements of one BYTES tensor (each a Python object of ~40 bytes beside its data: 65,536 of them take
# ~3 MB however short they are). Encoded images come one per batch row, far fewer.
MAX_BYTES_ELEMENTS = 1 << 16
_LENGTH_BYTES = 4


def raw_tensor(precision: str, shape: tuple[int, ...], raw: bytes, where: str) -> RequestTensor:
    """An input sent as raw bytes; `where` names it in messages ("input x"). Numeric contents are checked
    against the shape by validation; BYTES contents are split into their elements here."""
    if precision == BYTES:
        return bytes_tensor(shape, split_bytes(raw, bytes_element_count(shape, where), where), where)
    return RequestTensor(precision, shape, content=raw)


def bytes_tensor(shape: tuple[int, ...], elements: Sequence[bytes], where: str) -> RequestTensor:
    """A BYTES input from its elements (each a bytes object), as many as the shape holds."""
    count = bytes_element_count(shape, where)
    if len(elements) != count:
        raise InvalidArgument(
            f"Invalid content of {where}: shape {format_shape(shape)} holds {count} BYTES elements; "
            f"{len(elements)} given"
        )
    values = np.empty(count, dtype=object)
    values[:] = list(elements)  # element-wise: np.array would make a fixed-width bytes array of them
    return RequestTensor(BYTES, shape, values=values)


def bytes_element_count(shape: tuple[int, ...], where: str) -> int:
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"Invalid input shape of {where}: {len(shape)} dimensions exceed the limit of {MAX_RANK}")
    if any(dim < 0 for dim in shape):
        raise InvalidArgument(f"Invalid input shape of {where}: negative dimension in {format_shape(shape)}")
    count = math.prod(shape)
    if count > MAX_BYTES_ELEMENTS:
        raise InvalidArgument(
            f"Invalid input shape of {where}: {format_shape(shape)} holds {count} BYTES elements, "
            f"at most {MAX_BYTES_ELEMENTS}"
        )
    return count


def split_bytes(raw: bytes, count: int, where: str) -> list[bytes]:
    """Exactly `count` length-prefixed elements filling `raw`: any length reaching past the end, a cut
    length prefix, or bytes left over is INVALID_ARGUMENT."""
    elements = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise InvalidArgument(
                f"Invalid content of {where}: {len(raw) - offset} bytes follow its {count} BYTES elements"
            )
        if offset + _LENGTH_BYTES > len(raw):
            raise InvalidArgument(
                f"Invalid content of {where}: BYTES element {len(elements)} has a cut length prefix "
                f"({len(raw) - offset} of {_LENGTH_BYTES} bytes)"
            )
        length = int.from_bytes(raw[offset : offset + _LENGTH_BYTES], "little")
        offset += _LENGTH_BYTES
        if length > len(raw) - offset:
            raise InvalidArgument(
                f"Invalid content of {where}: BYTES element {len(elements)} announces {length} bytes; "
                f"{len(raw) - offset} remain"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise InvalidArgument(
            f"Invalid content of {where}: {len(elements)} BYTES elements for a shape that holds {count}"
        )
    return elements
