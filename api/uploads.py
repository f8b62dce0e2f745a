""".npy / .npz job uploads, read without trusting what their headers claim.

`numpy.load` allocates the array a .npy header declares before it reads the data, so a 128-byte file
claiming shape (2**40,) asks for terabytes, and an .npz member may inflate far beyond the upload. Here
an upload is first read as far as its headers (`inspect_upload`: each .npz member's declared size and
its .npy header, which must agree), so that what loading it will allocate is known, and refused or held
in the in-flight budget, before anything is unpacked. A .npy array is a view of the bytes the client
really sent; an .npz member is unpacked to at most its declared size (zipfile reads no further).
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from inference.errors import InvalidArgument, ServingError

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member, or an empty archive: what numpy.load looks for
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
_MALFORMED = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)
NPY_KEY = ""  # the name of a bare .npy body's one array


class UploadTooLarge(ServingError):
    """An upload that would unpack beyond --max_request_mb: retrying cannot help."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 413


@dataclass(frozen=True)
class Upload:
    """An upload read as far as its headers."""

    data: bytes
    shapes: dict[str, tuple[int, ...]]  # by .npz member name (without ".npy"); NPY_KEY for a .npy body
    unpacked_bytes: int  # what load() allocates: the .npz members' declared sizes (a .npy is a view: 0)

    def load(self) -> dict[str, np.ndarray]:
        """The arrays, by the names of `shapes`. Raises InvalidArgument."""
        try:
            if self.data.startswith(_ZIP_MAGIC):
                with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
                    return {_key(member): _npy(archive.read(member)) for member in archive.infolist()}
            return {NPY_KEY: _npy(self.data)}
        except _MALFORMED as exc:
            raise InvalidArgument(f"Invalid .npy/.npz upload: {exc}") from None


def inspect_upload(data: bytes, max_unpacked_bytes: int) -> Upload:
    """Read an upload's headers only: InvalidArgument if it is malformed (members that are not .npy, nested
    or repeated names, object arrays, a header whose shape and dtype disagree with the data's size),
    UploadTooLarge if its members declare more than `max_unpacked_bytes` in all."""
    try:
        if not data.startswith(_ZIP_MAGIC):
            shape, _, _ = _npy_header(io.BytesIO(data), len(data))
            return Upload(data, {NPY_KEY: shape}, 0)
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            _check_names(members)
            unpacked = sum(member.file_size for member in members)
            if unpacked > max_unpacked_bytes:
                raise UploadTooLarge(
                    f"The .npz upload unpacks to {unpacked / 2**20:.1f} MiB, more than the limit of "
                    f"{max_unpacked_bytes / 2**20:.1f} MiB (--max_request_mb); nothing was unpacked"
                )
            shapes = {}
            for member in members:
                with archive.open(member) as stream:  # inflates only the header's few bytes
                    shapes[_key(member)], _, _ = _npy_header(stream, member.file_size)
            return Upload(data, shapes, unpacked)
    except _MALFORMED as exc:
        raise InvalidArgument(f"Invalid .npy/.npz upload: {exc}") from None


def _check_names(members: list[zipfile.ZipInfo]) -> None:
    names = [member.filename for member in members]
    if any(not name.endswith(".npy") for name in names):
        raise ValueError("every member of an .npz must be an .npy file")
    if any("/" in name or "\\" in name for name in names):
        raise ValueError("the .npz members must not be in folders")
    if len(set(names)) != len(names):
        raise ValueError("an .npz member name appears twice")


def _key(member: zipfile.ZipInfo) -> str:
    return member.filename.removesuffix(".npy")


def _npy_header(stream: IO[bytes], size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a .npy header, checked against the `size` of the whole .npy."""
    version = npy_format.read_magic(stream)
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    shape, fortran_order, dtype = reader(stream)
    if dtype.hasobject:
        raise ValueError("object arrays would need pickle, which is never used")
    expected, held = math.prod(shape) * dtype.itemsize, size - stream.tell()
    if expected != held:
        raise ValueError(f"the header declares {expected} bytes of data, the file holds {held}")
    return shape, fortran_order, dtype


def _npy(data: bytes) -> np.ndarray:
    stream = io.BytesIO(data)
    shape, fortran_order, dtype = _npy_header(stream, len(data))
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")
