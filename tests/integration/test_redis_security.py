"""Redis with a password, and over TLS (`rediss://`), as broker and result backend of real `ovms` stacks.

The broker URL reaches ovms as OVMS_BROKER_URL, as the README advises, so that no command line shows
the password; the tests check that ovms keeps it off its children's command lines and out of its log.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import trustme
from ovmsclient import make_grpc_client

from tasks.broker import EmbeddedRedis, free_port
from tests.support.stack import REPO, OvmsProcess, ovms_command, start_ovms
from tests.support.tls_redis import TlsRedis, tls_redis_server

PASSWORD = "redis-pw-5e1f07"


@pytest.fixture(scope="module")
def password_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = tls_redis_server()
    if binary is None:
        message = "no redis-server built with TLS (Debian's redis-server package has it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: .ci/run installs it")
        pytest.skip(message)
    directory = tmp_path_factory.mktemp("redis-pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for name, cert in (("server", ca.issue_cert("127.0.0.1", "localhost")), ("client", ca.issue_cert("ovms.test"))):
        cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    files = {name: str(directory / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    server = TlsRedis(
        binary,
        PASSWORD,
        files["ca.pem"],
        files["server.pem"],
        files["server.key"],
        (files["client.pem"], files["client.key"]),
    )
    server.start()
    yield server
    server.stop()


def _serve_digits(broker_url: str, *flags: str, env: dict[str, str] | None = None) -> OvmsProcess:
    return start_ovms(
        ["--model_name", "digits", "--model_path", str(REPO / "models" / "digits"), *flags],
        env={"OVMS_BROKER_URL": broker_url, **(env or {})},
    )


def _assert_serves_digits(process: OvmsProcess, models_dir: Path) -> None:
    images = np.load(models_dir / "data" / "imgs.npy")[:16]
    labels = np.load(models_dir / "data" / "labels.npy")[:16]
    grpc_classes = make_grpc_client(process.grpc_address).predict({"x": images}, "digits").argmax(axis=1)
    assert (grpc_classes == labels).mean() >= 0.8
    reply = requests.post(
        f"{process.rest_url}/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(np.argmax(reply.json()["predictions"], axis=1), grpc_classes)


def _assert_job_runs(process: OvmsProcess, models_dir: Path) -> None:
    """An asynchronous job: its results go through Celery's own Redis result backend."""
    images = np.load(models_dir / "data" / "imgs.npy")[:300]
    reply = requests.post(
        f"{process.rest_url}/v1/jobs", json={"model": "digits", "instances": images.tolist()}, timeout=30
    )
    assert reply.status_code == 202, reply.text
    status_url = process.rest_url + reply.json()["status_url"]
    deadline = time.monotonic() + 30
    while (state := requests.get(status_url, timeout=10).json()["state"]) != "SUCCESS":
        assert state in ("PENDING", "STARTED") and time.monotonic() < deadline, state
        time.sleep(0.1)
    outputs = requests.get(f"{status_url}/result", timeout=30).json()["outputs"]
    assert np.array(outputs["probabilities"]).shape == (300, 10)


def _command_lines_showing(secret: str, process: OvmsProcess) -> list[str]:
    """Command lines of `process` and its children (its session) that contain `secret`."""
    shown = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if os.getsid(int(cmdline.parent.name)) != process.process.pid:
                continue
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended meanwhile
        if secret in text:
            shown.append(text)
    return shown


def test_all_in_one_on_a_password_protected_redis(password_redis: EmbeddedRedis, models_dir: Path):
    process = _serve_digits(password_redis.url)
    try:
        _assert_serves_digits(process, models_dir)
        _assert_job_runs(process, models_dir)
        assert _command_lines_showing(PASSWORD, process) == [], "a worker got the password on its command line"
    finally:
        process.stop()
    assert PASSWORD not in process.log()


@pytest.mark.parametrize("role", [None, "api", "worker"])
def test_a_wrong_password_fails_the_start_with_the_reason(password_redis: EmbeddedRedis, role: str | None):
    wrong = password_redis.url.replace(PASSWORD, "not-the-password")
    command = ovms_command(*([role] if role else []), "--model_name", "m", "--model_path", "/nonexistent")
    if role != "worker":
        command += ["--port", str(free_port())]
    started = time.monotonic()
    run = subprocess.run(
        command,
        env={**os.environ, "OVMS_BROKER_URL": wrong},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert f"Redis broker redis://:***@127.0.0.1:{password_redis.port}/0: authentication failed" in output
    assert "not-the-password" not in output
    assert time.monotonic() - started < 30


def test_all_in_one_over_tls_with_flower(tls_redis: TlsRedis, models_dir: Path):
    """Broker and result backend on a TLS-only Redis that also wants a password and client certificates:
    the api, the worker (Celery consumer, reply backend, registry) and Flower all reach it."""
    flower = free_port()
    auth = ("ops", "fl0wer")
    process = _serve_digits(
        tls_redis.url,
        "--flower_port",
        str(flower),
        env={"FLOWER_USER": auth[0], "FLOWER_PASSWORD": auth[1]},
    )
    try:
        _assert_serves_digits(process, models_dir)
        _assert_job_runs(process, models_dir)
        assert _flower_workers(f"http://localhost:{flower}", auth) == [_worker_id(process)]
        assert _command_lines_showing(PASSWORD, process) == [], "a worker or Flower got it on its command line"
    finally:
        process.stop()
    log = process.log()
    assert PASSWORD not in log
    assert "insecure SSL behaviour" not in log  # kombu's warning when rediss:// comes without TLS settings


def _worker_id(process: OvmsProcess) -> str:
    """The id of the one worker the process started (logged as "Worker <id> serves ...")."""
    return re.search(r"Worker (\S+) serves", process.log())[1]


def _flower_workers(url: str, auth: tuple[str, str]) -> list[str]:
    """The workers Flower reaches through the broker (a broadcast over the TLS connection)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            reply = requests.get(f"{url}/api/workers?refresh=1", auth=auth, timeout=15)
            if reply.ok and reply.json():
                return [name.split("@", 1)[0] for name in reply.json()]
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "Flower never listed a worker"
        time.sleep(0.5)
