"""Model repositories on local disk, S3 (or MinIO) and Google Cloud Storage, behind one interface.

`open_storage(base_path)` picks the backend from the scheme (`s3://bucket/prefix`, `gs://bucket/prefix`, else a
local path). Every backend lists the positive-integer version "directories" under the base path, takes a cheap
fingerprint of a version's files (to notice changes), and hands OpenVINO a local directory: the version directory
itself for local storage, a verified download in a per-version cache directory for remote storage.

Problems the operator must fix (missing bucket, rejected credentials, unreachable endpoint, missing base path) are
raised as ConfigError whose message starts with the base path and says what is wrong.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from inference.model_config import STORAGE_SCHEME, ConfigError

log = logging.getLogger("serving")

# Bounded network behaviour: a dead endpoint must fail within seconds, not minutes.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0  # the longest silence between two reads, not a limit on a whole download
S3_TOTAL_ATTEMPTS = 2
GCS_RETRY_DEADLINE_S = 4.0
GCS_READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"

MODEL_HINT = "*.xml with its *.bin, or *.onnx"
NO_VERSIONS = f"holds no version directories (positive integers such as 1/, each holding {MODEL_HINT})"
_VERSION_NAME = re.compile(r"[1-9][0-9]*")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")

Fingerprint = tuple[tuple[Any, ...], ...]


@runtime_checkable
class ModelStorage(Protocol):
    """Where one model's versions live; see the module docstring."""

    base_path: str

    def list_versions(self) -> list[int]: ...

    def fingerprint(self, version: int) -> Fingerprint | None: ...

    def fetch(self, version: int) -> Path: ...

    def release(self, version: int) -> None: ...

    def no_versions_reason(self) -> str: ...


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers


class UnsafeKeyError(ValueError):
    """A remote object key that would not stay inside its version directory once written to disk."""


def parse_version_name(name: str) -> int | None:
    """The version a directory name stands for: a positive decimal integer without leading zeros, else None."""
    return int(name) if _VERSION_NAME.fullmatch(name) else None


def safe_relative_key(relative: str) -> str:
    """Return `relative` (a key below a version directory) if it is a plain relative path; else UnsafeKeyError."""
    if not relative:
        raise UnsafeKeyError("empty key")
    if relative.startswith("/"):
        raise UnsafeKeyError("absolute path")
    if "\\" in relative:
        raise UnsafeKeyError("backslash in key")
    if any(ord(char) < 32 for char in relative):
        raise UnsafeKeyError("control character in key")
    for segment in relative.split("/"):
        if segment == "":
            raise UnsafeKeyError("empty path segment")
        if segment in (".", ".."):
            raise UnsafeKeyError(f"'{segment}' path segment")
    return relative


def is_directory_marker(relative: str, size: int) -> bool:
    """Zero-byte `folder/` objects (S3 console, gsutil) and the version's own marker carry no file."""
    return relative == "" or (relative.endswith("/") and size == 0)


def has_complete_model(relatives: Iterable[str]) -> bool:
    """True if the top level of a version holds an IR (name.xml with name.bin) or an ONNX file."""
    top = {name for name in relatives if "/" not in name}
    if any(name.endswith(".onnx") for name in top):
        return True
    return any(name.endswith(".xml") and name[: -len(".xml")] + ".bin" in top for name in top)


def cache_dir_name(base_path: str, endpoint: str = "") -> str:
    """A flat, safe directory name for a remote base path; the hash keeps distinct paths and endpoints apart."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", base_path).strip("._-")[:80] or "models"
    digest = hashlib.sha256(f"{endpoint}\n{base_path}".encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


def default_cache_root() -> Path:
    """$OVMS_CACHE_DIR, else ~/.cache/ovms."""
    return Path(os.environ.get("OVMS_CACHE_DIR") or "~/.cache/ovms").expanduser()


class _WarnOnce:
    """Logs each distinct message once per storage: the model manager polls every second."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, level: int, message: str) -> None:
        if message not in self._seen:
            self._seen.add(message)
            log.log(level, message)


def _version_numbers(base_path: str, names: Iterable[str], warn: _WarnOnce) -> list[int]:
    versions = []
    for name in names:
        version = parse_version_name(name)
        if version is None:
            warn(logging.WARNING, f"Ignoring {base_path}/{name}: version directories must be positive integers")
        else:
            versions.append(version)
    return sorted(set(versions))


# ---------------------------------------------------------------------------------------------------------------
# Local disk


@dataclass(frozen=True)
class _LocalScan:
    files: tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns)
    refused: tuple[str, ...]  # entries whose symlinks resolve outside the base path


class LocalStorage:
    """A base path on the local file system; fetch returns the version directory itself.

    The base path is made absolute where the storage is opened, so that every message names the full path
    that was tried, whatever the working directory of the one who reads it.
    """

    def __init__(self, base_path: str) -> None:
        self.base_path = os.path.abspath(base_path)
        self._root = Path(self.base_path)
        self._warn = _WarnOnce()

    def list_versions(self) -> list[int]:
        entries = self._entries()
        if self._version_directory(entries) is not None:
            return []  # the path is itself a version directory: no_versions_reason() says so, not each file
        names = [entry.name for entry in entries if entry.is_dir()]
        for entry in entries:
            if not entry.is_dir():
                self._warn(logging.WARNING, f"Ignoring {entry}: version directories must be positive integers")
        return _version_numbers(self.base_path, names, self._warn)

    def no_versions_reason(self) -> str:
        """Why the base path offers no version: suggests its parent when it is a version directory itself."""
        version = self._version_directory(self._entries())
        if version is not None:
            return (
                f"{self.base_path}: this looks like version directory {version} of a model; "
                f"pass its parent {self._root.parent}"
            )
        return f"{self.base_path}: {NO_VERSIONS}"

    def fingerprint(self, version: int) -> Fingerprint | None:
        scan = self._scan(version)
        return scan.files if has_complete_model(name for name, _, _ in scan.files) else None

    def fetch(self, version: int) -> Path:
        directory = self._root / str(version)
        scan = self._scan(version)
        if scan.refused:
            raise ConfigError(f"{directory}: refusing to serve: {', '.join(scan.refused)} links outside the base path")
        if not has_complete_model(name for name, _, _ in scan.files):
            raise ConfigError(f"{directory}: no complete model ({MODEL_HINT})")
        return directory

    def release(self, version: int) -> None:
        """Nothing to do: the files were never copied."""

    def _entries(self) -> list[Path]:
        if not self._root.is_dir():
            raise ConfigError(f"{self.base_path}: base path not found (no such directory)")
        try:
            return list(self._root.iterdir())
        except OSError as exc:
            raise ConfigError(f"{self.base_path}: cannot read the base path: {exc.strerror}") from None

    def _version_directory(self, entries: list[Path]) -> int | None:
        """The version the base path stands for when it looks like one version's directory (a positive
        integer name, a model's files in it, no version directories below): a path one level too deep."""
        version = parse_version_name(self._root.name)
        if version is None or any(entry.is_dir() and parse_version_name(entry.name) for entry in entries):
            return None
        return version if has_complete_model(entry.name for entry in entries if entry.is_file()) else None

    def _scan(self, version: int) -> _LocalScan:
        """The version's regular files; symlinks that escape the base path are refused (and logged once)."""
        directory = self._root / str(version)
        if not directory.is_dir():
            return _LocalScan((), ())
        base = self._root.resolve()
        if not directory.resolve().is_relative_to(base):
            return _LocalScan((), (self._refuse(directory, "."),))
        files, refused = [], []
        for dirpath, dirnames, filenames in os.walk(directory):  # does not descend into symlinked directories
            for name in [*filenames, *dirnames]:
                path = Path(dirpath, name)
                relative = path.relative_to(directory).as_posix()
                if path.is_symlink() and not path.resolve().is_relative_to(base):
                    refused.append(self._refuse(directory, relative))
                elif name in filenames and path.is_file():
                    stat = path.stat()
                    files.append((relative, stat.st_size, stat.st_mtime_ns))
        return _LocalScan(tuple(sorted(files)), tuple(sorted(refused)))

    def _refuse(self, directory: Path, relative: str) -> str:
        self._warn(
            logging.ERROR, f"Refusing {directory}/{relative}: it resolves outside the base path {self.base_path}"
        )
        return relative


# ---------------------------------------------------------------------------------------------------------------
# Remote storage: shared listing, verification and cache handling


@dataclass(frozen=True)
class RemoteFile:
    key: str  # the full object key
    relative: str  # the key below the version "directory"
    size: int
    revision: str  # ETag (S3) or generation (GCS): changes whenever the object does
    md5_hex: str | None = None  # content MD5 when the service gives one
    crc32c_hex: str | None = None  # content CRC32C when the service gives one


def _split_bucket(base_path: str) -> tuple[str, str]:
    """scheme://bucket/some/prefix/ -> ("bucket", "some/prefix")."""
    match = STORAGE_SCHEME.fullmatch(base_path)
    bucket, _, prefix = (match.group(2) if match else "").partition("/")
    if not bucket:
        raise ConfigError(f"{base_path}: missing bucket name (expected scheme://bucket/prefix)")
    return bucket, prefix.strip("/")


def _file_digests(path: Path) -> tuple[str, str]:
    """(md5 hex, crc32c hex) of a file, read in 1 MiB chunks."""
    import google_crc32c  # a dependency of google-cloud-storage

    md5, crc = hashlib.md5(usedforsecurity=False), google_crc32c.Checksum()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            md5.update(chunk)
            crc.update(chunk)
    return md5.hexdigest(), crc.digest().hex()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialises fetch/release of one version across threads and the worker processes sharing the cache."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RemoteStorage(ABC):
    """Listing, fingerprints, verified downloads and the cache; subclasses talk to one service."""

    def __init__(self, base_path: str, bucket: str, prefix: str, cache_root: Path, endpoint: str) -> None:
        self.base_path = base_path
        self.bucket = bucket
        self.prefix = prefix
        self.cache_dir = cache_root / cache_dir_name(base_path, endpoint)
        self._dir_prefix = f"{prefix}/" if prefix else ""
        self._warn = _WarnOnce()
        self._client_lock = threading.Lock()
        self._client_instance: Any = None

    # -- what a subclass provides

    @abstractmethod
    def _make_client(self) -> Any:
        """The service client; raises ConfigError for unusable credentials or settings."""

    @abstractmethod
    def _list_directory(self, prefix: str) -> tuple[list[str], list[str]]:
        """(sub-"directory" names, object names) directly under prefix."""

    @abstractmethod
    def _list_objects(self, prefix: str) -> Iterator[RemoteFile]:
        """Every object under prefix, recursively."""

    @abstractmethod
    def _download(self, file: RemoteFile, destination: Path) -> None: ...

    @abstractmethod
    @contextmanager
    def _service_errors(self, key: str | None = None) -> Iterator[None]:
        """Turns the service's exceptions into ConfigError with a clear message (key: the object being fetched)."""
        yield

    def _md5_is_not_content_hash(self, file: RemoteFile) -> bool:
        """Whether an MD5 mismatch is expected (e.g. S3 ETags of KMS-encrypted objects are not the MD5)."""
        return False

    # -- the ModelStorage interface

    def list_versions(self) -> list[int]:
        with self._service_errors():
            directories, objects = self._list_directory(self._dir_prefix)
        if not directories and not objects:
            raise ConfigError(f"{self.base_path}: base path not found (no objects under it)")
        for name in objects:
            if name:  # "" is the base path's own folder marker
                self._warn(logging.WARNING, f"Ignoring {self.base_path}/{name}: not a version directory")
        return _version_numbers(self.base_path, directories, self._warn)

    def no_versions_reason(self) -> str:
        return f"{self.base_path}: {NO_VERSIONS}"

    def fingerprint(self, version: int) -> Fingerprint | None:
        return self._fingerprint_of(self._files(version))

    def fetch(self, version: int) -> Path:
        files = self._files(version)
        fingerprint = self._fingerprint_of(files)
        if fingerprint is None:
            raise ConfigError(f"{self.base_path}/{version}: no complete model ({MODEL_HINT})")
        target = self.cache_dir / str(version)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with _exclusive(self.cache_dir / f".{version}.lock"):
                if not self._cached(version, files, fingerprint):
                    self._download_version(version, files, fingerprint)
        except OSError as exc:
            raise ConfigError(
                f"{self.base_path}/{version}: cannot write the model cache {self.cache_dir}: {exc}"
            ) from None
        return target

    def release(self, version: int) -> None:
        if not self.cache_dir.is_dir():
            return
        try:
            with _exclusive(self.cache_dir / f".{version}.lock"):
                self._marker(version).unlink(missing_ok=True)
                shutil.rmtree(self.cache_dir / str(version), ignore_errors=True)
        except OSError as exc:  # a leftover copy wastes disk space but harms nothing
            log.warning("Could not remove the cached copy of %s/%d: %s", self.base_path, version, exc)

    # -- internals

    @property
    def _client(self) -> Any:
        """Created on first use, so that open_storage() itself never touches the network or credentials."""
        with self._client_lock:
            if self._client_instance is None:
                self._client_instance = self._make_client()
            return self._client_instance

    def _files(self, version: int) -> list[RemoteFile]:
        """The version's objects, without folder markers and without keys that would escape the directory."""
        with self._service_errors():
            listed = list(self._list_objects(f"{self._dir_prefix}{version}/"))
        files = []
        for file in listed:
            if is_directory_marker(file.relative, file.size):
                continue
            try:
                safe_relative_key(file.relative)
            except UnsafeKeyError as exc:
                self._warn(logging.ERROR, f"Refusing {self._url(file.key)}: {exc}; it would escape the version")
                continue
            files.append(file)
        return files

    def _url(self, key: str) -> str:
        """An object's full address, for messages."""
        return f"{self.base_path.partition('://')[0]}://{self.bucket}/{key}"

    @staticmethod
    def _fingerprint_of(files: list[RemoteFile]) -> Fingerprint | None:
        if not has_complete_model(file.relative for file in files):
            return None
        return tuple(sorted((file.relative, file.size, file.revision) for file in files))

    def _marker(self, version: int) -> Path:
        """The fingerprint of the cached copy, kept beside it (not inside, where OpenVINO reads)."""
        return self.cache_dir / f".{version}.fingerprint.json"

    def _cached(self, version: int, files: list[RemoteFile], fingerprint: Fingerprint) -> bool:
        marker, target = self._marker(version), self.cache_dir / str(version)
        if not marker.is_file() or marker.read_text() != json.dumps(fingerprint):
            return False
        return all(
            (path := target.joinpath(*file.relative.split("/"))).is_file() and path.stat().st_size == file.size
            for file in files
        )

    def _download_version(self, version: int, files: list[RemoteFile], fingerprint: Fingerprint) -> None:
        """Download into a staging directory, verify every file, then swap it in for the old copy."""
        for stale in self.cache_dir.glob(f".{version}.partial-*"):  # left by a crashed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=self.cache_dir))
        try:
            for file in files:
                destination = self._destination(staging, file)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with self._service_errors(file.key):
                    self._download(file, destination)
                self._verify(file, destination)
            self._marker(version).unlink(missing_ok=True)
            shutil.rmtree(self.cache_dir / str(version), ignore_errors=True)
            staging.rename(self.cache_dir / str(version))
            self._marker(version).write_text(json.dumps(fingerprint))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("Fetched %s/%d into %s (%d files)", self.base_path, version, self.cache_dir / str(version), len(files))

    def _destination(self, staging: Path, file: RemoteFile) -> Path:
        """Where a (checked) key lands; re-checked on the resolved path as a second line of defence."""
        destination = staging.joinpath(*safe_relative_key(file.relative).split("/"))
        if not destination.resolve().is_relative_to(staging.resolve()):
            raise ConfigError(f"{self._url(file.key)}: refusing a key that escapes the cache directory")
        return destination

    def _verify(self, file: RemoteFile, path: Path) -> None:
        size = path.stat().st_size
        if size != file.size:
            self._corrupt(file, f"{size} bytes downloaded, {file.size} expected")
        if file.md5_hex is None and file.crc32c_hex is None:
            return
        md5_hex, crc32c_hex = _file_digests(path)
        if file.crc32c_hex is not None and crc32c_hex != file.crc32c_hex:
            self._corrupt(file, "CRC32C mismatch")
        if file.md5_hex is not None and md5_hex != file.md5_hex and not self._md5_is_not_content_hash(file):
            self._corrupt(file, "MD5 mismatch")

    def _corrupt(self, file: RemoteFile, what: str) -> None:
        raise ConfigError(
            f"{self._url(file.key)}: download failed verification ({what}); "
            "the object may have changed during the download"
        )


# ---------------------------------------------------------------------------------------------------------------
# S3 and S3-compatible services (MinIO)

_S3_ACCESS_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
}


class S3Storage(RemoteStorage):
    """s3://bucket/prefix. Env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or
    AWS_DEFAULT_REGION), AWS_PROFILE, S3_ENDPOINT (e.g. http://localhost:9000 for MinIO; path-style addressing)."""

    def __init__(self, base_path: str, cache_root: Path) -> None:
        bucket, prefix = _split_bucket(base_path)
        self.endpoint = os.environ.get("S3_ENDPOINT") or None
        self._anonymous = False
        super().__init__(base_path, bucket, prefix, cache_root, self.endpoint or "aws")

    def _make_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"total_max_attempts": S3_TOTAL_ATTEMPTS, "mode": "standard"},
        }
        if self.endpoint:
            options["s3"] = {"addressing_style": "path"}
        try:
            session = boto3.session.Session(region_name=region)  # reads AWS_PROFILE and the usual credential chain
            if session.get_credentials() is None:
                log.info("%s: no AWS credentials found; using anonymous access", self.base_path)
                self._anonymous = True
                options["signature_version"] = UNSIGNED
            return session.client("s3", endpoint_url=self.endpoint, config=Config(**options))
        except BotoCoreError as exc:  # ProfileNotFound, PartialCredentialsError, ...
            raise ConfigError(f"{self.base_path}: unusable AWS credentials: {exc}") from None
        except ValueError as exc:  # an endpoint URL botocore cannot use
            raise ConfigError(f"{self.base_path}: invalid S3_ENDPOINT {self.endpoint!r}: {exc}") from None

    def _list_directory(self, prefix: str) -> tuple[list[str], list[str]]:
        directories, objects = [], []
        for page in self._pages(Prefix=prefix, Delimiter="/"):
            directories += [
                entry["Prefix"][len(prefix) :].removesuffix("/") for entry in page.get("CommonPrefixes", [])
            ]
            objects += [entry["Key"][len(prefix) :] for entry in page.get("Contents", [])]
        return directories, objects

    def _list_objects(self, prefix: str) -> Iterator[RemoteFile]:
        for page in self._pages(Prefix=prefix):
            for entry in page.get("Contents", []):
                etag = entry.get("ETag", "").strip('"')
                yield RemoteFile(
                    key=entry["Key"],
                    relative=entry["Key"][len(prefix) :],
                    size=entry["Size"],
                    revision=etag,
                    md5_hex=etag if _MD5_HEX.fullmatch(etag) else None,  # multipart ETags are not an MD5
                )

    def _pages(self, **arguments: str) -> Iterator[dict[str, Any]]:
        return self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **arguments)

    def _download(self, file: RemoteFile, destination: Path) -> None:
        """boto3's managed transfer: big files come in parallel ranged GETs, which s3transfer pins to one ETag."""
        self._client.download_file(self.bucket, file.key, str(destination))

    def _md5_is_not_content_hash(self, file: RemoteFile) -> bool:
        with self._service_errors(file.key):
            head = self._client.head_object(Bucket=self.bucket, Key=file.key)
        return head.get("ServerSideEncryption", "").startswith("aws:kms") or "SSECustomerAlgorithm" in head

    def _credentials_hint(self) -> str:
        if self._anonymous:
            return (
                "no credentials found and anonymous access was refused: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        profile = os.environ.get("AWS_PROFILE")
        return f"check AWS_PROFILE={profile}" if profile else "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"

    @contextmanager
    def _service_errors(self, key: str | None = None) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        where = f"{self.base_path}" if key is None else self._url(key)
        try:
            yield
        except ClientError as exc:
            raise ConfigError(f"{where}: {self._client_error(exc, key)}") from None
        except (ConnectionError, HTTPClientError) as exc:
            endpoint = self.endpoint or "the AWS S3 endpoint"
            raise ConfigError(f"{where}: cannot reach {endpoint} ({type(exc).__name__}: {exc})") from None
        except (BotoCoreError, Boto3Error) as exc:
            raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None

    def _client_error(self, exc: Any, key: str | None) -> str:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return "bucket does not exist"
        if code in _S3_ACCESS_CODES or status == 403:
            return f"access denied ({code}; {self._credentials_hint()})"
        if status == 404 and key is not None:
            return "the object disappeared during the download"
        if status == 404:
            endpoint = self.endpoint or "AWS S3"
            return f"not found (HTTP 404 from {endpoint}): no such bucket, or S3_ENDPOINT is not an S3 service"
        if code in ("412", "PreconditionFailed"):
            return "the object changed during the download"
        return f"{code or status}: {error.get('Message', exc)}"


# ---------------------------------------------------------------------------------------------------------------
# Google Cloud Storage


class GcsStorage(RemoteStorage):
    """gs://bucket/prefix. Env: GOOGLE_APPLICATION_CREDENTIALS (a key file; anonymous access when unset),
    STORAGE_EMULATOR_HOST (e.g. http://localhost:9023, honoured by google-cloud-storage)."""

    def __init__(self, base_path: str, cache_root: Path) -> None:
        bucket, prefix = _split_bucket(base_path)
        self.endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or None
        self.credentials_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        super().__init__(base_path, bucket, prefix, cache_root, self.endpoint or "gcs")

    def _make_client(self) -> Any:
        import google.auth
        from google.auth.exceptions import GoogleAuthError
        from google.cloud import storage

        if not self.credentials_file:
            return storage.Client.create_anonymous_client()
        try:
            # Passed explicitly: with STORAGE_EMULATOR_HOST set the client would otherwise go anonymous.
            credentials, project = google.auth.default(scopes=[GCS_READ_ONLY_SCOPE])  # reads the key file
        except GoogleAuthError as exc:
            raise ConfigError(
                f"{self.base_path}: cannot use GOOGLE_APPLICATION_CREDENTIALS={self.credentials_file}: {exc}"
            ) from None
        return storage.Client(project=project or "<none>", credentials=credentials)

    @property
    def _call_options(self) -> dict[str, Any]:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return {
            "timeout": (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            "retry": DEFAULT_RETRY.with_timeout(GCS_RETRY_DEADLINE_S),
        }

    def _list_directory(self, prefix: str) -> tuple[list[str], list[str]]:
        directories, objects = [], []
        blobs = self._client.list_blobs(self.bucket, prefix=prefix, delimiter="/", **self._call_options)
        for page in blobs.pages:  # the iterator follows nextPageToken
            objects += [blob.name[len(prefix) :] for blob in page]
            directories += [name[len(prefix) :].removesuffix("/") for name in page.prefixes]
        return directories, objects

    def _list_objects(self, prefix: str) -> Iterator[RemoteFile]:
        for blob in self._client.list_blobs(self.bucket, prefix=prefix, **self._call_options):
            yield RemoteFile(
                key=blob.name,
                relative=blob.name[len(prefix) :],
                size=int(blob.size or 0),
                revision=str(blob.generation),
                md5_hex=base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None,  # none for composites
                crc32c_hex=base64.b64decode(blob.crc32c).hex() if blob.crc32c else None,
            )

    def _download(self, file: RemoteFile, destination: Path) -> None:
        """Downloads exactly the listed generation, so a concurrent overwrite cannot mix in."""
        blob = self._client.bucket(self.bucket).blob(file.key, generation=int(file.revision))
        blob.download_to_filename(str(destination), **self._call_options)

    def _credentials_hint(self) -> str:
        if not self.credentials_file:
            return "anonymous access was refused: set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
        return f"check GOOGLE_APPLICATION_CREDENTIALS={self.credentials_file}"

    @contextmanager
    def _service_errors(self, key: str | None = None) -> Iterator[None]:
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from google.cloud.storage import exceptions as transfer

        where = f"{self.base_path}" if key is None else self._url(key)
        endpoint = self.endpoint or "storage.googleapis.com"
        try:
            yield
        except api.NotFound:
            what = "bucket does not exist" if key is None else "the object disappeared during the download"
            raise ConfigError(f"{where}: {what}") from None
        except (api.Forbidden, api.Unauthorized) as exc:
            raise ConfigError(f"{where}: access denied ({exc.code}; {self._credentials_hint()})") from None
        except auth.RefreshError as exc:
            reason = exc.args[0] if exc.args else exc  # args[1] is the raw token response
            raise ConfigError(
                f"{where}: access denied: credentials rejected ({reason}; {self._credentials_hint()})"
            ) from None
        except api.RetryError as exc:
            network = isinstance(exc.cause, (auth.TransportError, requests.ConnectionError, requests.Timeout))
            what = f"cannot reach {endpoint}" if network else "the service keeps failing"
            raise ConfigError(f"{where}: {what} (gave up retrying: {exc.cause})") from None
        except (auth.TransportError, requests.ConnectionError, requests.Timeout) as exc:
            raise ConfigError(f"{where}: cannot reach {endpoint} ({type(exc).__name__}: {exc})") from None
        except api.GoogleAPICallError as exc:
            raise ConfigError(f"{where}: {exc.code} {exc.message}") from None
        except (transfer.DataCorruption, transfer.InvalidResponse, auth.GoogleAuthError) as exc:
            raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------


def open_storage(base_path: str, cache_root: Path | None = None) -> ModelStorage:
    """The storage for a model's base_path, chosen by scheme; remote ones cache under cache_root."""
    match = STORAGE_SCHEME.fullmatch(base_path)
    if match is None:
        return LocalStorage(base_path)
    scheme = match.group(1).lower()
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    if scheme == "s3":
        return S3Storage(base_path, root)
    if scheme == "gs":
        return GcsStorage(base_path, root)
    raise ConfigError(f"{base_path}: unsupported storage scheme {scheme}:// (use a local path, s3:// or gs://)")
