"""`ovms status` against a real running server with traffic, and the names its processes show in `ps`.

One private Redis; on it an all-in-one `ovms` with two api processes and Flower, and a second worker
started by hand (`ovms worker`, as on another host). `ovms status` runs as the real command, reading Redis
(--broker_url) and asking the REST port (--url)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from ovms.healthcheck import server_arguments
from tasks.broker import EmbeddedRedis, free_port
from tests.support.stack import REPO, OvmsProcess, start_ovms

REQUESTS = 40
DIGIT = {"instances": [[0.0] * 64]}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, models_dir: Path) -> Iterator[tuple[OvmsProcess, OvmsProcess, int]]:
    """The all-in-one (2 api processes, Flower) and a worker of its own, both serving digits."""
    model = ["--model_name", "digits", "--model_path", str(models_dir / "digits"), "--broker_url", redis_server.url]
    flower_port = free_port()
    server = start_ovms([*model, "--grpc_workers", "2", "--flower_port", str(flower_port)])
    try:
        worker = start_ovms(model, role="worker")
    except BaseException:
        server.stop()
        raise
    try:
        yield server, worker, flower_port
    finally:
        worker.stop()
        server.stop()


def ovms_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OVMS_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "ovms", "status", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def title(process: psutil.Process) -> str:
    return " ".join(" ".join(process.cmdline()).split())


def test_the_processes_are_named_by_what_they_are(stack, redis_server: EmbeddedRedis) -> None:
    server, worker, flower_port = stack
    rest, grpc = server.rest_port, server.grpc_port
    names = sorted(title(child) for child in psutil.Process(server.process.pid).children())
    assert names == [
        f"ovms api 1/2 grpc:{grpc} rest:{rest}",
        f"ovms api 2/2 grpc:{grpc} rest:{rest}",
        f"ovms flower 127.0.0.1:{flower_port}",  # local only: no FLOWER_USER / FLOWER_PASSWORD
        "ovms worker CPU",
    ]
    assert title(psutil.Process(redis_server.pid)).startswith(f"ovms redis 127.0.0.1:{redis_server.port}")
    # A role started by hand keeps its command line (Celery did not retitle it): the container healthcheck
    # reads the flags from it.
    flags = server_arguments(Path(f"/proc/{worker.process.pid}/cmdline").read_bytes())
    assert flags[0] == "worker" and "--broker_url" in flags


def test_status_shows_models_workers_and_the_last_minute_from_redis_and_from_the_rest_port(stack, redis_server):
    server, worker, _ = stack
    latencies = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        assert requests.post(f"{server.rest_url}/v1/models/digits:predict", json=DIGIT, timeout=10).ok
        latencies.append((time.perf_counter() - started) * 1000)
    deadline = time.monotonic() + 10
    while True:  # the workers flush their counts once a second
        result = ovms_status("--broker_url", redis_server.url, "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        (row,) = document["versions"]
        if round(row["requests_per_s"] * document["window_s"]) == REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert round(row["requests_per_s"] * document["window_s"]) == REQUESTS
    assert 50 <= document["window_s"] <= 60
    assert row["failed"] == 0
    # from entering the api's queue to the worker's answer: within the client's time (a bucket is within 10 %)
    assert 0 < row["p50_ms"] <= statistics.median(latencies) * 1.1
    assert (row["model"], row["version"], row["state"], row["queued"]) == ("digits", 1, "AVAILABLE", 0)
    workers = {entry["worker_id"]: entry for entry in document["workers"]}
    assert sorted(row["workers"]) == sorted(workers) and len(workers) == 2
    assert {entry["worker_id"] for entry in document["workers"]} >= {worker.worker_id()}
    for entry in workers.values():
        assert (entry["device"], entry["state"], entry["in_flight"], entry["models"]) == (
            "CPU",
            "serving",
            0,
            ["digits"],
        )
        assert entry["host"] and entry["worker_id"].startswith(f"CPU-{entry['host']}-")

    over_rest = ovms_status("--url", server.rest_url)
    assert over_rest.returncode == 0, over_rest.stderr
    lines = over_rest.stdout.splitlines()
    assert lines[0].endswith("cluster-wide") and f"from {server.rest_url}" in lines[0]
    assert lines[2].split() == ["MODEL", "VERSION", "STATE", "WORKERS", "QUEUED", "REQ/S", "P50", "MS", "FAILED"]
    model_row = lines[3].split()
    assert model_row[:3] == ["digits", "1", "AVAILABLE"] and set(model_row[3].split(",")) == set(workers)
    assert [line.split()[0] for line in lines[6:]] == sorted(workers)
    # the environment's broker URL, without --url, reads Redis
    from_env = ovms_status(env={"OVMS_BROKER_URL": redis_server.url})
    assert from_env.returncode == 0 and "from Redis redis://127.0.0.1" in from_env.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker_url", "redis://127.0.0.1:1/0"], "ovms status: Redis broker redis://127.0.0.1:1/0 is not usable"),
        (["--url", "http://127.0.0.1:1"], "ovms status: no answer from http://127.0.0.1:1: ConnectionError"),
        (["--url", "127.0.0.1:8000"], "ovms status: --url 127.0.0.1:8000 has no scheme"),
        (
            ["--url", "http://a:1", "--broker_url", "redis://b:2"],
            "ovms status: give --url (ask an api) or --broker_url",
        ),
    ],
)
def test_status_errors_are_one_line_and_exit_1(args: list[str], message: str) -> None:
    result = ovms_status(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def test_status_from_an_api_without_the_route_says_what_it_answered(stack) -> None:
    server, _, _ = stack
    result = ovms_status("--url", f"{server.rest_url}/v1/models/digits")  # a base URL that is no api's
    assert result.returncode == 1
    assert result.stderr.startswith("ovms status: 404 ") and result.stderr.count("\n") == 1
