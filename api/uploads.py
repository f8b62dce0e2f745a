""".npy / .npz job uploads, read without trusting what their headers claim.

`numpy.load` allocates the array a .npy header declares before it reads the data, so a 128-byte file
claiming shape (2**40,) asks for terabytes, and an .npz member may inflate far beyond the upload. Here
an array is a view of bytes the client really sent, and an archive may not unpack to more than the
request size limit.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from inference.errors import InvalidArgument

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member, or an empty archive: what numpy.load looks for
_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def load_upload(data: bytes, max_unpacked_bytes: int) -> np.ndarray | dict[str, np.ndarray]:
    """One array for a .npy body; name -> array for an .npz body. Raises InvalidArgument."""
    try:
        if data.startswith(_ZIP_MAGIC):
            return _npz(data, max_unpacked_bytes)
        return _npy(data)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise InvalidArgument(f"Invalid .npy/.npz upload: {exc}") from None


def _npy(data: bytes) -> np.ndarray:
    stream = io.BytesIO(data)
    version = npy_format.read_magic(stream)
    reader = _HEADER_READERS.get(version)
    if reader is None:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    shape, fortran_order, dtype = reader(stream)
    if dtype.hasobject:
        raise ValueError("object arrays would need pickle, which is never used")
    offset = stream.tell()
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data) - offset:
        raise ValueError(f"the header declares {expected} bytes of data, the file holds {len(data) - offset}")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def _npz(data: bytes, max_unpacked_bytes: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        if any(not member.filename.endswith(".npy") for member in members):
            raise ValueError("every member of an .npz must be an .npy file")
        unpacked = sum(member.file_size for member in members)
        if unpacked > max_unpacked_bytes:
            raise ValueError(f"it unpacks to {unpacked} bytes, more than the limit of {max_unpacked_bytes}")
        # zipfile stops at each member's declared size, so a member that lies about it cannot inflate further
        return {member.filename.removesuffix(".npy"): _npy(archive.read(member)) for member in members}
