"""Tenants and their limits through real processes: a worker and two `ovms api` commands (one of them
with two api processes) on one Redis, one token file. Requests a second and in flight are held across
all of them; beyond a limit, 429 + Retry-After on REST and RESOURCE_EXHAUSTED + `retry-after` on gRPC
(TF Serving and KServe v2 alike), while another tenant is served; a killed api's leases expire; job
samples are limited per tenant; metrics and job listings name the tenant."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from api.protos import grpc_service_pb2 as pb
from api.protos import grpc_service_pb2_grpc
from api.quotas import INFLIGHT_KEY, LEASE_GRACE_S
from tests.support.jobs import wait_for_end
from tests.support.load import float_request
from tests.support.stack import REPO, OvmsProcess, ovms_command, private_redis, start_ovms

TOKENS = {
    "acme": "acme-tok-1f0e",
    "trickle": "trickle-tok-3e8a",
    "slowpoke": "slow-tok-77c2",
    "batch": "batch-tok-0d5a",
    "free": "free-tok-9b31",
}
TOKEN_FILE = f"""# tenants of test_tenants.py
{TOKENS["acme"]} tenant=acme rps=5 weight=2
acme-tok-second tenant=acme
{TOKENS["trickle"]} tenant=trickle rps=1
{TOKENS["slowpoke"]} tenant=slowpoke inflight=2
{TOKENS["batch"]} tenant=batch job_samples=300
{TOKENS["free"]} tenant=free
"""
ROW = [1.0, 2.0, 3.0, 4.0]  # one sample of `versioned`
TIMEOUT_S = 30

own_redis_url = pytest.fixture(name="own_redis_url", scope="module")(private_redis)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tenants") / "tokens"
    path.write_text(TOKEN_FILE)
    return path


def _args(small_config: Path, redis_url: str, token_file: Path) -> list[str]:
    return ["--config_path", str(small_config), "--broker_url", redis_url, "--auth_token_file", str(token_file)]


@pytest.fixture(scope="module")
def worker(small_config: Path, own_redis_url: str, token_file: Path) -> Iterator[OvmsProcess]:
    process = start_ovms(_args(small_config, own_redis_url, token_file), role="worker")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(worker: OvmsProcess, small_config: Path, own_redis_url: str, token_file: Path) -> Iterator[OvmsProcess]:
    """`ovms api --grpc_workers 2`: two api processes behind one pair of ports."""
    process = start_ovms([*_args(small_config, own_redis_url, token_file), "--grpc_workers", "2"], role="api")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def other_api(worker: OvmsProcess, small_config: Path, own_redis_url: str, token_file: Path) -> Iterator[OvmsProcess]:
    """A second `ovms api` command on the same Redis, as on another host."""
    process = start_ovms(_args(small_config, own_redis_url, token_file), role="api")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def store(own_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis_url)
    yield client
    client.close()


def _as(tenant: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKENS[tenant]}"
    return session


def _metadata(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[tenant]}"),)


# ---------------------------------------------------------------------------- one call on each interface

Call = Callable[[OvmsProcess, str], tuple[str, str, str | None]]  # -> (outcome, message, retry after)


def _rest(reply: requests.Response) -> tuple[str, str, str | None]:
    if reply.status_code == 200:
        return "OK", "", None
    assert reply.headers["Content-Type"] == "application/json", reply.text
    return str(reply.status_code), reply.json()["error"], reply.headers.get("Retry-After")


def _grpc(call: Callable[[], object]) -> tuple[str, str, str | None]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code().name, error.details(), dict(error.trailing_metadata() or ()).get("retry-after")
    return "OK", "", None


def tfs_rest(api: OvmsProcess, tenant: str) -> tuple[str, str, str | None]:
    url = f"{api.rest_url}/v1/models/versioned/versions/2:predict"
    return _rest(_as(tenant).post(url, json={"instances": [ROW]}, timeout=TIMEOUT_S))


def v2_rest(api: OvmsProcess, tenant: str) -> tuple[str, str, str | None]:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    return _rest(_as(tenant).post(f"{api.rest_url}/v2/models/versioned/versions/2/infer", json=body, timeout=TIMEOUT_S))


def tfs_grpc(api: OvmsProcess, tenant: str) -> tuple[str, str, str | None]:
    request = float_request("versioned", "x", np.array([ROW]))
    request.model_spec.version.value = 2
    with grpc.insecure_channel(api.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return _grpc(lambda: stub.Predict(request, timeout=TIMEOUT_S, metadata=_metadata(tenant)))


def v2_grpc(api: OvmsProcess, tenant: str) -> tuple[str, str, str | None]:
    request = pb.ModelInferRequest(model_name="versioned", model_version="2")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.array([ROW], np.float32).tobytes())
    with grpc.insecure_channel(api.grpc_address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return _grpc(lambda: stub.ModelInfer(request, timeout=TIMEOUT_S, metadata=_metadata(tenant)))


INTERFACES = {"tfs-rest": tfs_rest, "v2-rest": v2_rest, "tfs-grpc": tfs_grpc, "v2-grpc": v2_grpc}
REFUSED = {"tfs-rest": "429", "v2-rest": "429", "tfs-grpc": "RESOURCE_EXHAUSTED", "v2-grpc": "RESOURCE_EXHAUSTED"}


# ---------------------------------------------------------------------------- requests a second


def test_a_rate_holds_across_api_commands_and_processes(api: OvmsProcess, other_api: OvmsProcess) -> None:
    """acme may make 5 calls a second (bursts of 5), wherever they arrive: calls spread over two api
    commands, one of them two processes (a new connection each, so the kernel spreads them)."""

    def status(i: int) -> requests.Response:
        return requests.get(f"{(api, other_api)[i % 2].rest_url}/v1/models/versioned", headers=headers, timeout=10)

    headers = _as("acme").headers
    time.sleep(1.0)  # whatever acme used before is back
    started = time.monotonic()
    with ThreadPoolExecutor(10) as clients:
        replies = list(clients.map(status, range(20)))
    elapsed = time.monotonic() - started
    passed = [reply for reply in replies if reply.status_code == 200]
    refused = [reply for reply in replies if reply.status_code != 200]
    assert 5 <= len(passed) <= 5 + 5 * elapsed + 1, (len(passed), elapsed)
    assert refused and {reply.status_code for reply in refused} == {429}
    for reply in refused:
        assert reply.json() == {"error": "tenant acme is over its 5 requests/s; retry after 1 s"}
        assert reply.headers["Retry-After"] == "1"
    assert {i % 2 for i, reply in enumerate(replies) if reply.status_code == 429} == {0, 1}, "both apis refused"


@pytest.mark.parametrize("interface", INTERFACES)
def test_beyond_its_rate_a_tenant_is_refused_on_every_interface_and_others_are_served(
    api: OvmsProcess, interface: str
) -> None:
    call = INTERFACES[interface]
    outcomes = []
    for _ in range(10):  # 1 a second: the second call within a second is refused
        outcomes.append(call(api, "trickle"))
        if outcomes[-1][0] != "OK":
            break
    outcome, message, retry_after = outcomes[-1]
    assert outcome == REFUSED[interface], outcomes
    assert message == "tenant trickle is over its 1 requests/s; retry after 1 s"
    assert retry_after == "1"
    assert [call(api, "free")[0] for _ in range(10)] == ["OK"] * 10, "another tenant is not held back"


# ---------------------------------------------------------------------------- requests in flight


class SlowBody:
    """A predict whose body arrives in two parts: its call is in flight from its head until it is answered."""

    def __init__(self, api: OvmsProcess, tenant: str, timeout_s: float | None = None) -> None:
        self.body = json.dumps({"instances": [ROW]}).encode()
        head = [
            "POST /v1/models/versioned/versions/2:predict HTTP/1.1",
            f"Host: localhost:{api.rest_port}",
            f"Authorization: Bearer {TOKENS[tenant]}",
            "Content-Type: application/json",
            f"Content-Length: {len(self.body)}",
            *([f"X-Request-Timeout: {timeout_s:g}"] if timeout_s is not None else []),
        ]
        self.socket = socket.create_connection(("localhost", api.rest_port), timeout=TIMEOUT_S)
        self.socket.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + self.body[:5])

    def finish(self) -> str:
        """The rest of the body; the answer's status line."""
        self.socket.sendall(self.body[5:])
        answer = b""
        while b"\r\n" not in answer:
            answer += self.socket.recv(4096)
        self.socket.close()
        return answer.split(b"\r\n")[0].decode()


def _wait_for_leases(store: redis.Redis, tenant: str, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while store.zcard(INFLIGHT_KEY.format(tenant)) != count:
        assert time.monotonic() < deadline, f"{tenant} never had {count} calls in flight"
        time.sleep(0.02)


def test_calls_in_flight_are_held_across_apis_and_released_with_their_answer(
    api: OvmsProcess, other_api: OvmsProcess, store: redis.Redis
) -> None:
    held = [SlowBody(api, "slowpoke"), SlowBody(other_api, "slowpoke")]
    over = "tenant slowpoke is over its 2 requests in flight; retry after 1 s"
    try:
        _wait_for_leases(store, "slowpoke", 2)
        for interface, call in INTERFACES.items():
            for where in (api, other_api):
                outcome, message, retry_after = call(where, "slowpoke")
                assert outcome == REFUSED[interface], (interface, message)
                assert (message, retry_after) == (over, "1")
        assert tfs_rest(api, "free")[0] == "OK"
    finally:
        statuses = [call.finish() for call in held]
    assert all(status.startswith("HTTP/1.1 200") for status in statuses), statuses
    assert store.zcard(INFLIGHT_KEY.format("slowpoke")) == 0, "released before the answers were sent"
    assert [tfs_rest(where, "slowpoke")[0] for where in (api, other_api, api)] == ["OK"] * 3, "one at a time"


def test_a_killed_api_s_calls_in_flight_expire_at_their_deadline(
    api: OvmsProcess, small_config: Path, own_redis_url: str, token_file: Path, store: redis.Redis
) -> None:
    doomed = start_ovms(_args(small_config, own_redis_url, token_file), role="api")
    try:
        held = [SlowBody(doomed, "slowpoke", timeout_s=1) for _ in range(2)]
        _wait_for_leases(store, "slowpoke", 2)
        doomed.signal(signal.SIGKILL)
        killed = time.monotonic()
        for call in held:
            call.socket.close()
        assert tfs_rest(api, "slowpoke")[0] == "429", "a dead api's leases are still counted"
        while (outcome := tfs_rest(api, "slowpoke")[0]) != "OK":
            assert outcome == "429" and time.monotonic() - killed < 1 + LEASE_GRACE_S + 10
            time.sleep(0.2)
        assert time.monotonic() - killed > 1 + LEASE_GRACE_S - 1.5, "not before their deadline + grace"
    finally:
        doomed.stop()


# ---------------------------------------------------------------------------- job samples


def test_a_tenant_s_queued_job_samples_are_limited(api: OvmsProcess, worker: OvmsProcess) -> None:
    batch = _as("batch")
    jobs_url = f"{api.rest_url}/v1/jobs"
    worker.signal(signal.SIGSTOP)  # the first job's samples stay queued
    try:
        first = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 200}, timeout=TIMEOUT_S)
        assert first.status_code == 202, first.text
        refused = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 200}, timeout=TIMEOUT_S)
        assert refused.status_code == 429
        assert refused.json() == {
            "error": "tenant batch is over its 300 job samples queued (200 queued, this job 200); retry after 10 s"
        }
        assert refused.headers["Retry-After"] == "10"
        too_large = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 301}, timeout=TIMEOUT_S)
        assert too_large.status_code == 413, too_large.text
        other = _as("free").post(jobs_url, json={"model": "versioned", "instances": [ROW] * 400}, timeout=TIMEOUT_S)
        assert other.status_code == 202, "another tenant's jobs are not counted against it"
    finally:
        worker.signal(signal.SIGCONT)
    assert wait_for_end(api.rest_url + first.json()["status_url"], TIMEOUT_S, batch)["state"] == "SUCCESS"
    second = batch.post(jobs_url, json={"model": "versioned", "instances": [ROW] * 300}, timeout=TIMEOUT_S)
    assert second.status_code == 202, second.text
    status = wait_for_end(api.rest_url + second.json()["status_url"], TIMEOUT_S, batch)
    assert (status["state"], status["tenant"]) == ("SUCCESS", "batch")


def test_job_listings_show_the_tenant(api: OvmsProcess) -> None:
    batch = _as("batch")
    submitted = batch.post(f"{api.rest_url}/v1/jobs", json={"model": "versioned", "instances": [ROW]}, timeout=30)
    assert submitted.status_code == 202, submitted.text
    listed = batch.get(f"{api.rest_url}/v1/jobs", timeout=TIMEOUT_S).json()["jobs"]
    assert listed and {job["tenant"] for job in listed} == {"batch"}
    listing = subprocess.run(
        ovms_command("jobs", "--url", api.rest_url),
        env={**os.environ, "OVMS_TOKEN": TOKENS["batch"]},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert listing[0].split() == ["ID", "CREATED", "MODEL", "STATE", "DONE/TOTAL", "TENANT"], listing
    assert submitted.json()["id"] in listing[1] and listing[1].split()[-1] == "batch", listing


# ---------------------------------------------------------------------------- metrics


def _samples(api: OvmsProcess) -> list[tuple[str, dict[str, str], float]]:
    text = requests.get(f"{api.rest_url}/metrics", timeout=10).text  # open: no token
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _total(samples: list[tuple[str, dict[str, str], float]], metric: str, /, **labels: str) -> float:
    return sum(value for name, found, value in samples if name == metric and labels.items() <= found.items())


def test_metrics_count_requests_and_refusals_by_tenant(api: OvmsProcess) -> None:
    before = _samples(api)
    for _ in range(3):
        assert tfs_rest(api, "free")[0] == "OK"
    while tfs_rest(api, "trickle")[0] == "OK":
        pass
    after = _samples(api)

    def grown(metric: str, /, **labels: str) -> float:
        return _total(after, metric, **labels) - _total(before, metric, **labels)

    assert grown("ovms_requests_success_total", tenant="free", method="Predict", interface="rest") == 3
    assert grown("ovms_request_time_us_count", tenant="free", name="versioned") == 3
    assert grown("ovms_tenant_refused_total", tenant="trickle", limit="rps") >= 1
    assert grown("ovms_tenant_refused_total", tenant="free") == 0
