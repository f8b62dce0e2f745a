"""Local model storage on a temporary directory, and the pure helpers behind remote storage."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inference.model_config import ConfigError
from inference.storage import (
    NO_VERSIONS,
    GcsStorage,
    LocalStorage,
    ModelStorage,
    RemoteFile,
    RemoteStorage,
    S3Storage,
    UnsafeKeyError,
    cache_dir_name,
    has_complete_model,
    is_directory_marker,
    open_storage,
    parse_version_name,
    safe_relative_key,
)


def write_ir(directory: Path, name: str = "model", weights: bytes = b"\0" * 16) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.xml").write_text("<net/>")
    (directory / f"{name}.bin").write_bytes(weights)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    base = tmp_path / "models" / "m"
    for version in (1, 2, 10):
        write_ir(base / str(version))
    return base


# -- local storage


def test_lists_positive_integer_directories_sorted(repo: Path) -> None:
    for name in ("0", "01", "foo", "-3", "\uff12"):  # the last: a full-width digit
        (repo / name).mkdir()
    (repo / "3").write_text("a file, not a directory")
    assert LocalStorage(str(repo)).list_versions() == [1, 2, 10]


def test_warns_once_per_ignored_name(repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    (repo / "foo").mkdir()
    storage = LocalStorage(str(repo))
    with caplog.at_level(logging.WARNING, logger="serving"):
        storage.list_versions()
        storage.list_versions()
    assert sum("foo" in record.message for record in caplog.records) == 1


def test_missing_base_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="base path not found"):
        LocalStorage(str(tmp_path / "nowhere")).list_versions()


def test_messages_name_the_full_path_of_a_relative_base_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage("models/nowhere")
    assert storage.base_path == str(tmp_path / "models" / "nowhere")
    with pytest.raises(ConfigError, match=f"^{tmp_path}/models/nowhere: base path not found"):
        storage.list_versions()


def test_an_empty_base_path_says_it_holds_no_version_directories(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path))
    assert storage.list_versions() == []
    assert storage.no_versions_reason() == f"{tmp_path}: {NO_VERSIONS}"


def test_a_version_directory_given_as_base_path_suggests_its_parent(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One line that names the parent to pass, instead of a warning per model file."""
    storage = LocalStorage(str(repo / "2"))
    with caplog.at_level(logging.WARNING, logger="serving"):
        assert storage.list_versions() == []
    assert caplog.records == []
    assert storage.no_versions_reason() == (
        f"{repo / '2'}: this looks like version directory 2 of a model; pass its parent {repo}"
    )


@pytest.mark.parametrize(
    "name, files",
    [("models", ["model.xml", "model.bin"]), ("3", ["model.xml"]), ("3", ["notes.txt"])],
    ids=["not a version name", "an incomplete model", "no model"],
)
def test_other_paths_without_versions_get_no_parent_suggested(tmp_path: Path, name: str, files: list[str]) -> None:
    base = tmp_path / name
    base.mkdir()
    for file in files:
        (base / file).write_text("")
    assert LocalStorage(str(base)).no_versions_reason() == f"{base}: {NO_VERSIONS}"


def test_fingerprint_changes_when_a_file_grows(repo: Path) -> None:
    storage = LocalStorage(str(repo))
    before = storage.fingerprint(1)
    assert before is not None and before == storage.fingerprint(1)
    with open(repo / "1" / "model.bin", "ab") as handle:
        handle.write(b"more")
    after = storage.fingerprint(1)
    assert after is not None and after != before


def test_fingerprint_changes_when_a_file_is_touched(repo: Path) -> None:
    storage = LocalStorage(str(repo))
    before = storage.fingerprint(1)
    stat = (repo / "1" / "model.xml").stat()
    os.utime(repo / "1" / "model.xml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert storage.fingerprint(1) != before


def test_incomplete_versions_have_no_fingerprint(repo: Path) -> None:
    (repo / "1" / "model.bin").unlink()
    (repo / "4").mkdir()
    storage = LocalStorage(str(repo))
    assert storage.fingerprint(1) is None  # .xml without its .bin
    assert storage.fingerprint(4) is None  # empty
    assert storage.fingerprint(99) is None  # missing
    with pytest.raises(ConfigError, match="no complete model"):
        storage.fetch(1)


def test_onnx_alone_is_complete(repo: Path) -> None:
    (repo / "5").mkdir()
    (repo / "5" / "model.onnx").write_bytes(b"onnx")
    assert LocalStorage(str(repo)).fingerprint(5) is not None


def test_fetch_returns_the_version_directory_and_release_keeps_it(repo: Path) -> None:
    storage = LocalStorage(str(repo))
    assert storage.fetch(2) == repo / "2"
    storage.release(2)
    assert (repo / "2" / "model.bin").is_file()


def test_symlink_outside_base_path_is_refused(repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"secret")
    (repo / "1" / "model.bin").unlink()
    (repo / "1" / "model.bin").symlink_to(outside)
    storage = LocalStorage(str(repo))
    with caplog.at_level(logging.ERROR, logger="serving"):
        assert storage.fingerprint(1) is None  # the .bin does not count, so the IR is incomplete
        storage.fingerprint(1)
    assert sum("Refusing" in record.message for record in caplog.records) == 1
    with pytest.raises(ConfigError, match="links outside the base path"):
        storage.fetch(1)


def test_escaping_symlink_beside_a_complete_model_blocks_fetch(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (repo / "2" / "extra").symlink_to(tmp_path / "elsewhere")
    storage = LocalStorage(str(repo))
    fingerprint = storage.fingerprint(2)
    assert fingerprint is not None and all(name != "extra" for name, _, _ in fingerprint)
    with pytest.raises(ConfigError, match="extra links outside"):
        storage.fetch(2)


def test_version_directory_linked_outside_is_refused(repo: Path, tmp_path: Path) -> None:
    write_ir(tmp_path / "other" / "7")
    (repo / "7").symlink_to(tmp_path / "other" / "7")
    storage = LocalStorage(str(repo))
    assert 7 in storage.list_versions()
    assert storage.fingerprint(7) is None
    with pytest.raises(ConfigError, match="outside the base path"):
        storage.fetch(7)


def test_symlink_inside_base_path_is_followed(repo: Path) -> None:
    (repo / "1" / "model.bin").unlink()
    (repo / "1" / "model.bin").symlink_to(repo / "2" / "model.bin")
    storage = LocalStorage(str(repo))
    assert storage.fingerprint(1) is not None
    assert storage.fetch(1) == repo / "1"


# -- choosing a backend


def test_open_storage_chooses_by_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVMS_CACHE_DIR", str(tmp_path / "cache"))
    local = open_storage(str(tmp_path))
    s3 = open_storage("s3://bucket/some/models/")
    gcs = open_storage("gs://bucket/models", cache_root=tmp_path / "other")
    assert isinstance(local, LocalStorage) and isinstance(local, ModelStorage)
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/models")
    assert s3.cache_dir.parent == tmp_path / "cache"
    assert isinstance(gcs, GcsStorage) and (gcs.bucket, gcs.prefix) == ("bucket", "models")
    assert gcs.cache_dir.parent == tmp_path / "other"
    assert open_storage("s3://bucket").prefix == ""


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVMS_CACHE_DIR", raising=False)
    assert open_storage("s3://bucket/m").cache_dir.parent == Path("~/.cache/ovms").expanduser()


@pytest.mark.parametrize("path", ["s3://", "s3:///models", "gs://"])
def test_missing_bucket_name(path: str) -> None:
    with pytest.raises(ConfigError, match="missing bucket name"):
        open_storage(path)


def test_unsupported_scheme() -> None:
    with pytest.raises(ConfigError, match="unsupported storage scheme az://"):
        open_storage("az://container/models")


# -- pure helpers


@pytest.mark.parametrize(("name", "version"), [("1", 1), ("42", 42), ("0", None), ("01", None), ("x1", None)])
def test_parse_version_name(name: str, version: int | None) -> None:
    assert parse_version_name(name) == version


@pytest.mark.parametrize("key", ["model.xml", "sub/dir/weights.bin", "a..b", "..hidden", "x/.config"])
def test_safe_keys_pass(key: str) -> None:
    assert safe_relative_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "..",
        "../evil.bin",
        "a/../../evil.bin",
        "a/..",
        "./model.xml",
        "a/./b",
        "/etc/passwd",
        "a//b",
        "a/",
        "..\\evil",
        "a\\b",
        "a\x00b",
        "line\nbreak",
    ],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(UnsafeKeyError):
        safe_relative_key(key)


def test_directory_markers() -> None:
    assert is_directory_marker("", 0) and is_directory_marker("", 5)
    assert is_directory_marker("sub/", 0)
    assert not is_directory_marker("sub/", 3)  # data under a slash-terminated key: refused later, not skipped
    assert not is_directory_marker("model.xml", 0)


@pytest.mark.parametrize(
    ("names", "complete"),
    [
        (["model.xml", "model.bin"], True),
        (["model.onnx"], True),
        (["model.xml"], False),
        (["model.xml", "other.bin"], False),
        (["sub/model.xml", "sub/model.bin"], False),  # only the top level is a model
        (["a.xml", "b.xml", "b.bin"], True),
        ([], False),
    ],
)
def test_has_complete_model(names: list[str], complete: bool) -> None:
    assert has_complete_model(names) is complete


def test_cache_dir_name_is_flat_safe_and_distinct() -> None:
    name = cache_dir_name("s3://bucket/../../etc")
    assert "/" not in name and not name.startswith(".") and name.startswith("s3_bucket_")
    assert cache_dir_name("s3://a/b_c") != cache_dir_name("s3://a_b/c")
    assert cache_dir_name("s3://a/b", "http://minio:9000") != cache_dir_name("s3://a/b", "aws")
    assert cache_dir_name("s3://a/b") == cache_dir_name("s3://a/b")


# -- remote caching and verification, against an in-memory service


class FakeRemote(RemoteStorage):
    """A bucket in a dict; `tamper` makes downloads deliver other bytes than listed."""

    def __init__(self, objects: dict[str, bytes], cache_root: Path) -> None:
        super().__init__("s3://bucket/m", "bucket", "m", cache_root, "fake")
        self.objects = objects
        self.tamper: dict[str, bytes] = {}
        self.downloads = 0

    def _make_client(self) -> object:
        return object()

    def _list_directory(self, prefix: str) -> tuple[list[str], list[str]]:
        below = [key[len(prefix) :] for key in self.objects if key.startswith(prefix)]
        return sorted({name.split("/")[0] for name in below if "/" in name}), [n for n in below if "/" not in n]

    def _list_objects(self, prefix: str) -> Iterator[RemoteFile]:
        for key, data in sorted(self.objects.items()):
            if key.startswith(prefix):
                md5 = hashlib.md5(data).hexdigest()
                yield RemoteFile(key, key[len(prefix) :], len(data), revision=md5, md5_hex=md5)

    def _download(self, file: RemoteFile, destination: Path) -> None:
        self.downloads += 1
        destination.write_bytes(self.tamper.get(file.key, self.objects[file.key]))

    @contextmanager
    def _service_errors(self, key: str | None = None) -> Iterator[None]:
        yield


@pytest.fixture
def remote(tmp_path: Path) -> FakeRemote:
    return FakeRemote({"m/1/model.xml": b"<net/>", "m/1/model.bin": b"weights", "m/x.txt": b""}, tmp_path / "cache")


def test_remote_listing_and_caching(remote: FakeRemote) -> None:
    assert remote.list_versions() == [1]
    path = remote.fetch(1)
    assert path == remote.cache_dir / "1" and (path / "model.bin").read_bytes() == b"weights"
    assert remote.fetch(1) == path and remote.downloads == 2  # the second fetch reused the cache
    remote.objects["m/1/model.bin"] = b"new weights"
    assert (remote.fetch(1) / "model.bin").read_bytes() == b"new weights"
    (path / "model.xml").unlink()  # a damaged cache is repaired
    assert (remote.fetch(1) / "model.xml").is_file()
    remote.release(1)
    assert not path.exists()


@pytest.mark.parametrize(("served", "error"), [(b"WEIGHTS", "MD5 mismatch"), (b"short", "5 bytes downloaded")])
def test_remote_download_that_fails_verification(remote: FakeRemote, served: bytes, error: str) -> None:
    remote.tamper["m/1/model.bin"] = served
    with pytest.raises(ConfigError, match=error):
        remote.fetch(1)
    assert not (remote.cache_dir / "1").exists()
    assert not list(remote.cache_dir.glob(".1.partial-*"))


def test_remote_escaping_keys_are_skipped(remote: FakeRemote, tmp_path: Path) -> None:
    remote.objects.update({"m/1/../../evil.bin": b"x", "m/1//abs.bin": b"x", "m/1/sub/": b"", "m/1/": b""})
    assert sorted(p.name for p in remote.fetch(1).iterdir()) == ["model.bin", "model.xml"]
    assert not any(path.name.startswith("evil") for path in tmp_path.rglob("*"))
