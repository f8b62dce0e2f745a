"""A finished job's result as a streamed HTTP body, written one chunk at a time as it is read from Redis.

The bytes are those the whole arrays gave before streaming: JSON as `json.dumps({"outputs": {name:
array.tolist()}})`, .npy as `np.save`; .npz is the zip `np.savez` writes (stored members `<name>.npy`),
with data descriptors after each member instead of sizes patched into its header (the stream cannot seek
back), which every zip reader, np.load included, reads the same.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import numpy as np

from tasks.job_result import JobResult


def json_body(result: JobResult) -> Iterator[bytes]:
    """`{"outputs": {name: rows}}` with json.dumps' separators, each chunk's rows encoded on their own."""
    yield b'{"outputs": {'
    for index, name in enumerate(result.layout):
        yield f"{', ' if index else ''}{json.dumps(name)}: [".encode()
        for number, part in enumerate(result.parts(name)):
            rows = json.dumps(part.tolist())[1:-1]  # a chunk has at least one row
            yield f"{', ' if number else ''}{rows}".encode()
        yield b"]"
    yield b"}}"


def npy_length(result: JobResult, name: str) -> int:
    dtype, shape = result.layout[name]
    return len(_npy_header(dtype, shape)) + int(np.prod(shape)) * dtype.itemsize


def npy_body(result: JobResult, name: str) -> Iterator[bytes]:
    yield _npy_header(*result.layout[name])
    for part in result.parts(name):
        yield part.tobytes()


def npz_body(result: JobResult) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for name in result.layout:
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:  # as np.savez does
                member.write(_npy_header(*result.layout[name]))
                for part in result.parts(name):
                    member.write(part.tobytes())
                    yield from sink.drain()
    yield from sink.drain()  # the last member's data descriptor and the central directory


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header np.save writes for an array of this dtype and shape (format 1.0, else 2.0)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


class _Sink:
    """A write-only file for zipfile whose content is handed on as it is written. It cannot seek, so
    zipfile writes each member's sizes after its data."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered beyond what `drain` hands on."""

    def drain(self) -> Iterator[bytes]:
        """What was written since the last drain, if anything."""
        if self._parts:
            yield b"".join(self._parts)
            self._parts.clear()
