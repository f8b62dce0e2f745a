"""Job uploads (.npy / .npz) are read as the bytes really sent: no header can make the server allocate more."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from api.uploads import NPY_KEY, UploadTooLarge, inspect_upload
from inference.errors import InvalidArgument

LIMIT = 1 << 20


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_claiming(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"\0" * 16) -> bytes:
    """A .npy header declaring `shape`, followed by only `data`."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npz(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def load(data: bytes) -> dict[str, np.ndarray]:
    return inspect_upload(data, LIMIT).load()


def rejection(data: bytes) -> str:
    with pytest.raises(InvalidArgument) as error:
        load(data)
    assert error.value.message.startswith("Invalid .npy/.npz upload: ")
    return error.value.message


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_round_trip(order: str) -> None:
    array = np.asfortranarray(np.arange(12, dtype="<i8").reshape(3, 4)) if order == "F" else np.eye(3, dtype="<f2")
    loaded = load(npy(array))[NPY_KEY]
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_npz_round_trip() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.ones((2, 3), np.float32), b=np.arange(4, dtype=np.uint8))
    loaded = load(buffer.getvalue())
    assert sorted(loaded) == ["a", "b"]
    np.testing.assert_array_equal(loaded["b"], np.arange(4, dtype=np.uint8))


def test_a_header_claiming_terabytes_allocates_nothing() -> None:
    assert "the header declares 4398046511104 bytes of data, the file holds 16" in rejection(npy_claiming((2**40,)))


@pytest.mark.parametrize("data", [b"", b"\0" * 15, b"\0" * 17])
def test_data_must_match_the_header(data: bytes) -> None:
    rejection(npy_claiming((4,), data=data))


def test_object_arrays_are_refused_without_unpickling() -> None:
    assert "pickle" in rejection(npy_claiming((1,), dtype="|O", data=b"\0" * 8))


@pytest.mark.parametrize("data", [b"", b"not numpy at all", b"\x93NUMPY\x09\x00", b"PK\x03\x04truncated"])
def test_garbage_is_refused(data: bytes) -> None:
    rejection(data)


def test_an_npz_that_inflates_beyond_the_limit_is_refused_before_inflating() -> None:
    bomb = npz({"x.npy": npy(np.zeros(LIMIT, np.uint8))})  # 1 MiB of zeros compresses to ~1 KB
    assert len(bomb) < 10_000
    with pytest.raises(UploadTooLarge) as error:
        inspect_upload(bomb, LIMIT - 1)
    assert error.value.http_status == 413 and "nothing was unpacked" in error.value.message


def test_an_npz_member_that_is_not_npy_is_refused() -> None:
    assert "must be an .npy file" in rejection(npz({"x.npy": npy(np.ones(2)), "notes.txt": b"hello"}))


def test_an_npz_member_with_a_lying_header_is_refused() -> None:
    rejection(npz({"x.npy": npy_claiming((2**40,))}))


def test_the_headers_tell_what_loading_allocates_before_anything_is_unpacked() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.zeros((1000, 64), np.float32), b=np.zeros(3, np.uint8))
    upload = inspect_upload(buffer.getvalue(), LIMIT)
    assert upload.shapes == {"a": (1000, 64), "b": (3,)}
    assert 256_000 < upload.unpacked_bytes < 257_000
    assert inspect_upload(npy(np.ones((2, 3))), LIMIT).unpacked_bytes == 0  # a view of the body


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize(
    ("names", "message"),
    [(["x.npy", "x.npy"], "appears twice"), (["inner/x.npy"], "in folders"), (["x.npy", "y.txt"], "must be an .npy")],
)
def test_nested_and_repeated_members_are_refused(names: list[str], message: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, npy(np.ones(2)))
    assert message in rejection(buffer.getvalue())


@pytest.mark.parametrize("data_bytes", [8, 24])
def test_an_npz_member_whose_header_disagrees_with_its_size_is_refused_unread(data_bytes: int) -> None:
    assert "the header declares 16 bytes of data" in rejection(
        npz({"x.npy": npy_claiming((4,), data=b"\0" * data_bytes)})
    )


def test_an_npz_object_member_is_refused() -> None:
    assert "pickle" in rejection(npz({"x.npy": npy_claiming((1,), dtype="|O", data=b"\0" * 8)}))
