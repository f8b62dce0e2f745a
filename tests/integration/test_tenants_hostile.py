"""Hostile checks of tenants and their limits through real processes (a worker and an `ovms api
--grpc_workers 2` on a Redis of the module's own, which one test pauses): one HTTP/2 connection's many streams,
calls past their deadline, `ovms submit` for a tenant with a low rate (its polls wait out their 429s), a
cancelled job's samples given back at once, and a paused Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import requests

from api.quotas import INFLIGHT_KEY
from tasks.broker import EmbeddedRedis
from tasks.job_backlog import tenant_samples
from tests.support.jobs import npy_bytes
from tests.support.stack import REPO, OvmsProcess, ovms_command, start_ovms

TOKENS = {
    "trickle": "hostile-trickle-5c1d",  # rps=2: fewer than `ovms submit` polls a second
    "slow": "hostile-slow-a0e4",  # inflight=2
    "batch": "hostile-batch-77f0",  # job_samples=100
}
TOKEN_FILE = f"""# tenants of test_tenants_hostile.py
{TOKENS["trickle"]} tenant=trickle rps=2
{TOKENS["slow"]} tenant=slow inflight=2
{TOKENS["batch"]} tenant=batch job_samples=100
"""
ROW = [1.0, 2.0, 3.0, 4.0]  # one sample of `versioned`
TIMEOUT_S = 30
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def breakable_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    os.kill(server.pid, signal.SIGCONT)  # a paused one must be able to stop
    server.stop()


@pytest.fixture(scope="module")
def args(small_config: Path, breakable_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    token_file = tmp_path_factory.mktemp("hostile") / "tokens"
    token_file.write_text(TOKEN_FILE)
    return [
        "--config_path",
        str(small_config),
        "--broker_url",
        breakable_redis.url,
        "--auth_token_file",
        str(token_file),
    ]


@pytest.fixture(scope="module")
def worker(args: list[str]) -> Iterator[OvmsProcess]:
    process = start_ovms(args, role="worker")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(worker: OvmsProcess, args: list[str]) -> Iterator[OvmsProcess]:
    process = start_ovms([*args, "--grpc_workers", "2"], role="api")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def store(breakable_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(breakable_redis.url)
    yield client
    client.close()


def _as(tenant: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKENS[tenant]}"
    return session


class HalfOpen:
    """gRPC ModelInfer calls whose request message never comes: each holds its call (and lease) from its
    start, as a client's slow upload does, until cancelled or past its deadline."""

    def __init__(self, channel: grpc.Channel, tenant: str) -> None:
        self._call = channel.stream_unary(INFER, request_serializer=bytes, response_deserializer=bytes)
        self._metadata = (("authorization", f"Bearer {TOKENS[tenant]}"),)
        self._silence = threading.Event()

    def _nothing(self) -> Iterator[bytes]:
        self._silence.wait()
        yield from ()

    def start(self, timeout_s: float = TIMEOUT_S) -> grpc.Future:
        return self._call.future(self._nothing(), timeout=timeout_s, metadata=self._metadata)

    def end(self) -> None:
        self._silence.set()


def _leases_become(store: redis.Redis, tenant: str, count: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while store.zcard(INFLIGHT_KEY.format(tenant)) != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------- what held


def test_http2_streams_of_one_connection_hold_exactly_the_tenant_s_calls_in_flight(
    api: OvmsProcess, store: redis.Redis
) -> None:
    """40 concurrent streams on one HTTP/2 connection: 2 held, 38 refused with retry-after, and
    cancelling the held ones gives their leases back at once (not at their deadline)."""
    with grpc.insecure_channel(api.grpc_address) as channel:
        calls = HalfOpen(channel, "slow")
        try:
            futures = [calls.start() for _ in range(40)]
            assert _leases_become(store, "slow", 2, TIMEOUT_S)
            time.sleep(1.0)  # let every refusal arrive
            refused = [future for future in futures if future.done()]
            assert len(refused) == 38
            for future in refused:
                error = future.exception()
                assert (error.code(), error.details()) == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "tenant slow is over its 2 requests in flight; retry after 1 s",
                )
                assert dict(error.trailing_metadata())["retry-after"] == "1"
            for future in futures:
                future.cancel()
            assert _leases_become(store, "slow", 0, 3.0), "a cancelled call's lease outlives it"
        finally:
            calls.end()


def test_a_call_past_its_deadline_gives_its_lease_back_at_once(api: OvmsProcess, store: redis.Redis) -> None:
    with grpc.insecure_channel(api.grpc_address) as channel:
        calls = HalfOpen(channel, "slow")
        try:
            future = calls.start(timeout_s=1.5)
            assert _leases_become(store, "slow", 1, TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as ended:
                future.result()
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert _leases_become(store, "slow", 0, 2.0), "not at deadline + LEASE_GRACE_S"
        finally:
            calls.end()


# ---------------------------------------------------------------------------- what broke


def test_ovms_submit_output_works_for_a_tenant_with_a_low_rate(api: OvmsProcess, tmp_path: Path) -> None:
    samples = tmp_path / "in.npy"
    samples.write_bytes(npy_bytes(np.array([ROW] * 50, np.float32)))
    output = tmp_path / "out.npy"
    time.sleep(1.0)  # a full burst
    submitted = subprocess.run(
        ovms_command(
            "submit", "--url", api.rest_url, "--model", "versioned", "--input", str(samples), "--output", str(output)
        ),
        env={**os.environ, "OVMS_TOKEN": TOKENS["trickle"]},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stderr[-500:]
    assert np.load(output).shape == (50, 4)


def test_cancelling_a_queued_job_frees_its_tenant_s_job_samples(
    api: OvmsProcess, worker: OvmsProcess, store: redis.Redis
) -> None:
    batch = _as("batch")
    jobs_url = f"{api.rest_url}/v1/jobs"
    worker.signal(signal.SIGSTOP)  # as when the workers are busy with other tenants' jobs
    try:
        first = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 80}, timeout=TIMEOUT_S)
        assert first.status_code == 202, first.text
        cancelled = batch.delete(f"{jobs_url}/{first.json()['id']}", timeout=TIMEOUT_S)
        assert cancelled.json()["state"] == "REVOKED"
        second = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 30}, timeout=TIMEOUT_S)
        queued = tenant_samples(store, "batch")
    finally:
        worker.signal(signal.SIGCONT)
    assert second.status_code == 202, (second.text, queued)


# ---------------------------------------------------------------------------- Redis paused (keep last)


def test_a_paused_redis_answers_limited_calls_503_within_the_redis_timeout_and_limits_come_back(
    api: OvmsProcess, breakable_redis: EmbeddedRedis
) -> None:
    """No hang and no free pass while Redis is paused; the rate is enforced again once it is back."""
    trickle = _as("trickle")
    url = f"{api.rest_url}/v1/models/versioned"
    os.kill(breakable_redis.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        statuses = [trickle.get(url, timeout=TIMEOUT_S).status_code for _ in range(6)]
        assert time.monotonic() - started < 10, "a paused Redis held the calls"
        assert set(statuses) == {503}, statuses
    finally:
        os.kill(breakable_redis.pid, signal.SIGCONT)
    deadline = time.monotonic() + TIMEOUT_S
    while requests.get(f"{api.rest_url}/v1/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "never ready again"
        time.sleep(0.2)
    time.sleep(1.0)  # a full burst
    statuses = [trickle.get(url, timeout=TIMEOUT_S).status_code for _ in range(5)]
    assert statuses[:2] == [200, 200] and 429 in statuses, statuses
