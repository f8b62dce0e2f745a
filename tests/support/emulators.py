"""Real cloud-storage emulators as child processes on free ports: moto's S3 server and gcp-storage-emulator.

Use them as context managers in (module-scoped) fixtures:

    with moto_server() as endpoint:          # "http://127.0.0.1:PORT", for S3_ENDPOINT
        ...
    with gcs_emulator() as endpoint:         # "http://127.0.0.1:PORT", for STORAGE_EMULATOR_HOST
        ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.broker import free_port

HOST = "127.0.0.1"


def _executable(name: str) -> str:
    """A console script of this venv (next to the running Python), else one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


class EmulatorProcess:
    """One emulator server as a child process: `start()` returns once it answers at `endpoint`; `stop()` ends it."""

    def __init__(self, name: str, command: list[str], port: int, health_path: str, env: dict[str, str]) -> None:
        self.name = name
        self.port = port
        self.endpoint = f"http://{HOST}:{port}"
        self._command = command
        self._health_url = self.endpoint + health_path
        self._env = {**os.environ, **env}
        self._workdir = tempfile.mkdtemp(prefix=f"ovms-{name}-")
        self.log_path = Path(self._workdir) / "server.log"
        self._process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self._command, stdout=log, stderr=subprocess.STDOUT, cwd=self._workdir, env=self._env
            )
        self._wait_until_answering(timeout_s)
        return self.endpoint

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def _wait_until_answering(self, timeout_s: float) -> None:
        """Poll until any HTTP answer comes back (an error status counts: the server is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log()[-4000:]}")
            try:
                urllib.request.urlopen(self._health_url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer on {self._health_url} within {timeout_s} s")


def start_moto_server(env: dict[str, str] | None = None) -> EmulatorProcess:
    """moto's stand-alone server (S3 and the other AWS services) on a free port.

    Pass env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"} to make it check credentials against its own IAM
    (by default moto accepts any access key).
    """
    port = free_port()
    command = [_executable("moto_server"), "-H", HOST, "-p", str(port)]
    process = EmulatorProcess("moto_server", command, port, "/moto-api/", env or {})
    process.start()
    return process


def start_gcs_emulator() -> EmulatorProcess:
    """gcp-storage-emulator (the GCS JSON API), in memory, on a free port."""
    port = free_port()
    command = [_executable("gcp-storage-emulator"), "start", "--host", HOST, "--port", str(port), "--in-memory"]
    process = EmulatorProcess("gcp-storage-emulator", command, port, "/storage/v1/b", {})
    process.start()
    return process


@contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """A running moto_server for the `with` block; yields its endpoint URL."""
    process = start_moto_server(env)
    try:
        yield process.endpoint
    finally:
        process.stop()


@contextmanager
def gcs_emulator() -> Iterator[str]:
    """A running gcp-storage-emulator for the `with` block; yields its endpoint URL."""
    process = start_gcs_emulator()
    try:
        yield process.endpoint
    finally:
        process.stop()


class S3Cloud:
    """Test-side access to moto's S3, with the env the storage reads."""

    scheme = "s3"
    # Every kind of escaping key; moto stores keys verbatim.
    unsafe_keys = ("1/../../evil.bin", "1/..\\evil.xml", "1//abs.bin", "1/./dot.bin", "1/sub/../../../evil2.bin")

    def __init__(self, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.env = {
            "S3_ENDPOINT": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def dead_env(self, port: int) -> dict[str, str]:
        return {"S3_ENDPOINT": f"http://127.0.0.1:{port}"}

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)


class GcsCloud:
    """Test-side access to gcp-storage-emulator, with the env the storage reads."""

    scheme = "gs"
    # The emulator itself rejects keys with '..' segments and turns backslashes into slashes, so only these reach it.
    unsafe_keys = ("1//abs.bin", "1/./dot.bin", "1/sub/./x.bin")

    def __init__(self, endpoint: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.endpoint = endpoint
        self.env = {"STORAGE_EMULATOR_HOST": endpoint}
        self.client = storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )

    def dead_env(self, port: int) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}

    def create_bucket(self, bucket: str) -> None:
        self.client.create_bucket(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.bucket(bucket).blob(key).upload_from_string(data, retry=None, timeout=10)

    def delete(self, bucket: str, key: str) -> None:
        self.client.bucket(bucket).blob(key).delete()


Cloud = S3Cloud | GcsCloud
