"""BYTES tensors: elements of any length (encoded images), held as a numpy object array of `bytes`, and
their serialization on the wire, Triton's: each element as a 4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

BYTES = "BYTES"
_LENGTH = struct.Struct("<I")


def bytes_array(elements: Sequence[bytes]) -> np.ndarray:
    """A 1-D object array of `elements` (np.array would make a fixed-width bytes array, dropping trailing
    zero bytes)."""
    array = np.empty(len(elements), dtype=object)
    array[:] = list(elements)
    return array


def is_bytes_array(array: np.ndarray) -> bool:
    return array.dtype == object


def payload_nbytes(array: np.ndarray) -> int:
    """The bytes a tensor takes in a message's payload (and in memory, near enough)."""
    if is_bytes_array(array):
        return sum(len(element) for element in array.flat) + _LENGTH.size * array.size
    return array.nbytes


def serialize(array: np.ndarray) -> bytes:
    return b"".join(part for element in array.flat for part in (_LENGTH.pack(len(element)), element))


def deserialize(data: bytes | memoryview, count: int) -> np.ndarray:
    """The `count` elements serialized in `data`, which they must fill exactly; ValueError if they do not."""
    if count < 0 or count * _LENGTH.size > len(data):
        raise ValueError(f"{count} BYTES elements cannot fit in {len(data)} bytes")
    elements = []
    position = 0
    for _ in range(count):
        if position + _LENGTH.size > len(data):
            raise ValueError("BYTES elements end before their last length")
        (length,) = _LENGTH.unpack_from(data, position)
        position += _LENGTH.size
        if length > len(data) - position:
            raise ValueError(f"a BYTES element claims {length} bytes; {len(data) - position} remain")
        elements.append(bytes(data[position : position + length]))
        position += length
    if position != len(data):
        raise ValueError(f"{len(data) - position} bytes follow the last BYTES element")
    return bytes_array(elements)
