"""Bounded memory for large requests: in-flight byte budgets per api and per worker, refused at once with
RESOURCE_EXHAUSTED / 429 beyond them (never a hang, never a dead process), a lone large request still
served, and a worker that gives its memory back after a burst of large requests.

The peak figures for 4 parallel 256 MiB Predicts come from ops/memory_burst.py (not a timed test).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.test_grpc import content_tensor, predict_request
from tests.support.leaks import rss_bytes
from tests.support.stack import Fleet, OvmsProcess, private_redis

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

MAX_REQUEST_MB = 64
BUDGET_MB = 4
ROW_BYTES = 64 * 4  # one digits row, float32
STOP_S = 1.0  # a stopped worker stays live for its heartbeat TTL (3 s): keep every stop well below it
REFUSED_WITHIN_S = 5.0  # a refusal is immediate; generous for a loaded box, far below a hang
TIMEOUT_S = 60
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
RSS_SETTLED_BOUND = 100 << 20  # a worker that kept a burst's buffers holds several times this


@pytest.fixture(scope="module")
def stack(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One digits worker with a small budget, an api with a small budget, and an api with the default one."""
    config = tmp_path_factory.mktemp("budget") / "config.json"
    entry = {"name": "digits", "base_path": str(models_dir / "digits")}
    config.write_text(json.dumps({"model_config_list": [{"config": entry}]}))
    args = ["--config_path", str(config), "--broker_url", redis_url, "--max_request_mb", str(MAX_REQUEST_MB)]
    with Fleet(args) as started:
        yield {
            "worker": started.start_worker("--worker_max_inflight_mb", str(BUDGET_MB)),
            "small_api": started.start_api("--max_inflight_mb", str(BUDGET_MB)),
            "api": started.start_api(),
        }


def rows_of(mib: float) -> int:
    return int(mib * 2**20) // ROW_BYTES


def zeros_request(rows: int) -> predict_pb2.PredictRequest:
    return predict_request("digits", {"x": content_tensor(np.zeros((rows, 64), np.float32))})


def call(api: OvmsProcess, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    with grpc.insecure_channel(api.grpc_address, options=CHANNEL_OPTIONS) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=TIMEOUT_S)


def probabilities(api: OvmsProcess, rows: np.ndarray) -> np.ndarray:
    """digits' answer to `rows` (raises grpc.RpcError)."""
    reply = call(api, predict_request("digits", {"x": content_tensor(rows)}))
    return np.frombuffer(reply.outputs["probabilities"].tensor_content, np.float32).reshape(len(rows), 10)


def grpc_predict(api: OvmsProcess, request: predict_pb2.PredictRequest) -> tuple[str, float]:
    """The call's status code name and how long it took."""
    started = time.monotonic()
    try:
        call(api, request)
    except grpc.RpcError as error:
        return error.code().name, time.monotonic() - started
    return "OK", time.monotonic() - started


def parallel_predicts(api: OvmsProcess, count: int, rows: int, stopped: OvmsProcess | None = None) -> list:
    """`count` Predicts of `rows` zero rows at once; with `stopped`, that worker is frozen while they arrive."""
    request = zeros_request(rows)
    if stopped is not None:
        stopped.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            pending = [pool.submit(grpc_predict, api, request) for _ in range(count)]
            time.sleep(STOP_S)
            if stopped is not None:
                stopped.signal(signal.SIGCONT)
            return [future.result(timeout=TIMEOUT_S) for future in pending]
    finally:
        if stopped is not None:
            stopped.signal(signal.SIGCONT)


def assert_alive(stack: dict) -> None:
    assert all(process.process.poll() is None for process in stack.values()), "a process died"


def test_the_api_refuses_what_passes_its_budget_at_once(stack: dict) -> None:
    """While one 3 MiB request is held (its worker frozen), the others are refused within the budget of 4 MiB."""
    outcomes = parallel_predicts(stack["small_api"], 6, rows_of(3), stopped=stack["worker"])
    codes = sorted(code for code, _ in outcomes)
    assert codes == ["OK"] + ["RESOURCE_EXHAUSTED"] * 5, outcomes
    assert all(took < REFUSED_WITHIN_S for code, took in outcomes if code != "OK"), outcomes
    assert_alive(stack)


def test_a_rest_request_beyond_the_budget_is_429_with_retry_after(stack: dict) -> None:
    api, worker = stack["small_api"], stack["worker"]
    body = json.dumps({"instances": np.zeros((rows_of(2) // 2, 64)).tolist()})  # 2 MiB once decoded (float64)
    worker.signal(signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            held = pool.submit(grpc_predict, api, zeros_request(rows_of(3)))
            time.sleep(STOP_S / 2)
            started = time.monotonic()
            reply = requests.post(f"{api.rest_url}/v1/models/digits:predict", data=body, timeout=TIMEOUT_S)
            took = time.monotonic() - started
            worker.signal(signal.SIGCONT)
            assert held.result(timeout=TIMEOUT_S)[0] == "OK"
    finally:
        worker.signal(signal.SIGCONT)
    assert reply.status_code == 429, reply.text
    assert reply.headers["Retry-After"] == "1"
    assert "--max_inflight_mb" in reply.json()["error"]
    assert took < REFUSED_WITHIN_S
    assert requests.post(f"{api.rest_url}/v1/models/digits:predict", data=body, timeout=TIMEOUT_S).ok


def test_a_lone_request_larger_than_the_budgets_is_served_as_if_whole(stack: dict) -> None:
    """63 MiB through 4 MiB budgets; the worker runs it as 16 MiB inferences, which must not show."""
    api = stack["small_api"]
    rows = np.random.default_rng(7).uniform(0, 16, (rows_of(MAX_REQUEST_MB - 1), 64)).astype(np.float32)
    answer = probabilities(api, rows)
    boundary = rows_of(16)  # where the first inference ends
    for piece in (slice(0, 3), slice(boundary - 3, boundary + 3), slice(len(rows) - 3, len(rows))):
        np.testing.assert_allclose(answer[piece], probabilities(api, rows[piece]), rtol=1e-5, atol=1e-6)


def test_the_worker_refuses_what_passes_its_budget_and_serves_the_rest(stack: dict) -> None:
    """Through an api with room to spare, the worker's own budget (4 MiB) admits one 3 MiB message at a time."""
    seen: set[str] = set()
    for _ in range(3):  # the worker takes its queued messages together; rarely, one finishes first
        outcomes = parallel_predicts(stack["api"], 4, rows_of(3), stopped=stack["worker"])
        codes = {code for code, _ in outcomes}
        assert codes <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert "OK" in codes, outcomes
        seen |= codes
        if "RESOURCE_EXHAUSTED" in codes:
            break
    assert seen == {"OK", "RESOURCE_EXHAUSTED"}
    assert_alive(stack)


def test_the_worker_gives_memory_back_after_a_burst_of_large_requests(stack: dict) -> None:
    worker = stack["worker"]
    assert grpc_predict(stack["api"], zeros_request(1))[0] == "OK"
    baseline = rss_bytes(worker.process.pid)
    for _ in range(2):
        outcomes = parallel_predicts(stack["api"], 4, rows_of(MAX_REQUEST_MB - 1))
        assert {code for code, _ in outcomes} <= {"OK", "RESOURCE_EXHAUSTED"}, outcomes
        assert "OK" in {code for code, _ in outcomes}
    assert grpc_predict(stack["api"], zeros_request(1))[0] == "OK"
    deadline = time.monotonic() + 10
    while (grown := rss_bytes(worker.process.pid) - baseline) > RSS_SETTLED_BOUND and time.monotonic() < deadline:
        time.sleep(0.5)
    assert grown <= RSS_SETTLED_BOUND, f"the worker kept {grown >> 20} MB after the burst"
    assert_alive(stack)
