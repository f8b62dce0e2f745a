"""Models resident on demand: a worker memory budget (--worker_memory_mb) and idle_unload_s, with real
processes (Redis, `ovms worker`, `ovms api`) and real models.

Three names for `resnet` (62 to 66 MiB each once loaded, as the worker measures it) under a budget that fits
two: requests rotating between them are all answered, versions leave and enter memory (LOADING meanwhile),
and the loads and unloads are counted in /metrics. A request whose deadline is shorter than the load answers
UNAVAILABLE with Retry-After at once (REST and gRPC), and a retry that many seconds later is served.
`digits` with idle_unload_s leaves memory when unused, and the next request loads it again.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import openvino as ov
import pytest
import requests
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

from inference.states import LOADING_ON_DEMAND, NOT_RESIDENT
from tests.integration.test_grpc import content_tensor, predict_request, resnet_image
from tests.integration.test_status import ovms_status
from tests.support.stack import OvmsProcess, private_redis, wait_for_ready, worker_and_api

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)

RESNETS = ("ra", "rb", "rc")
BUDGET_MB = 160  # two of them, not three
IDLE_UNLOAD_S = 3.0
WAIT_S = 60.0
IMAGE = resnet_image(seed=3)
LOADS = re.compile(r'^ovms_model_(un)?loads_total\{name="(\w+)",reason="(\w+)",version="1"\} (\S+)$', re.MULTILINE)
LOAD_SECONDS = re.compile(r'^ovms_model_load_seconds_(sum|count)\{name="(\w+)",version="1"\} (\S+)$', re.MULTILINE)


def serving(models: dict[str, dict], directory: Path, redis_url: str) -> list[str]:
    """The flags of a stack on `redis_url` serving `models` (name -> config; the config file written to `directory`)."""
    config = directory / "config.json"
    entries = [{"config": {"name": name, **settings}} for name, settings in models.items()]
    config.write_text(json.dumps({"model_config_list": entries}))
    return ["--config_path", str(config), "--broker_url", redis_url]


@pytest.fixture(scope="module")
def budget(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """The api of a stack whose one worker holds at most BUDGET_MB of models: three resnets."""
    models = {name: {"base_path": str(models_dir / "resnet")} for name in RESNETS}
    args = serving(models, tmp_path_factory.mktemp("budget"), redis_url)
    with worker_and_api(args, worker_args=["--worker_memory_mb", str(BUDGET_MB)]) as (worker, api):
        yield api
        print("worker measured:", " | ".join(re.findall(r"Model \w+ version 1: loaded in .*", worker.log())[:6]))


@pytest.fixture(scope="module")
def expected(models_dir: Path) -> np.ndarray:
    """resnet's answer to IMAGE, run here."""
    compiled = ov.Core().compile_model(str(models_dir / "resnet" / "1" / "model.xml"), "CPU")
    return compiled.create_infer_request().infer({0: IMAGE})[compiled.output(0)]


def rest_predict(api: OvmsProcess, model: str, timeout_s: float | None = None) -> requests.Response:
    headers = {"X-Request-Timeout": str(timeout_s)} if timeout_s is not None else {}
    body = {"inputs": {"data": IMAGE.tolist()}}
    return requests.post(f"{api.rest_url}/v1/models/{model}:predict", json=body, headers=headers, timeout=WAIT_S)


def grpc_predict(api: OvmsProcess, model: str, timeout_s: float = WAIT_S) -> np.ndarray:
    """resnet's probabilities (raises grpc.RpcError)."""
    with grpc.insecure_channel(api.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(predict_request(model, {"data": content_tensor(IMAGE)}), timeout=timeout_s)
    return np.frombuffer(reply.outputs["prob"].tensor_content, np.float32).reshape(1, 1000)


def status(api: OvmsProcess, model: str) -> tuple[str, str]:
    """The model's version 1 as `GET /v1/models/{model}` shows it: (state, error_message)."""
    (version,) = requests.get(f"{api.rest_url}/v1/models/{model}", timeout=10).json()["model_version_status"]
    return version["state"], version["status"]["error_message"]


def lifecycle(api: OvmsProcess) -> dict[tuple[str, str, str], float]:
    """(loads | unloads | seconds, model, reason | sum | count) -> value, from /metrics."""
    text = requests.get(f"{api.rest_url}/metrics", timeout=10).text
    counts = {("unloads" if un else "loads", model, reason): float(v) for un, model, reason, v in LOADS.findall(text)}
    counts |= {("seconds", model, kind): float(v) for kind, model, v in LOAD_SECONDS.findall(text)}
    return counts


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def not_resident(api: OvmsProcess) -> list[str]:
    return [model for model in RESNETS if status(api, model) == ("AVAILABLE", NOT_RESIDENT)]


def assert_same(answer: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(answer, expected, rtol=1e-3, atol=1e-5)


class StatesSeen:
    """Polls every resnet's status while it runs; `seen` holds every (state, error_message) shown."""

    def __init__(self, api: OvmsProcess) -> None:
        self.api = api
        self.seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> StatesSeen:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model in RESNETS:
                self.seen.add(status(self.api, model))
            time.sleep(0.02)


def test_three_models_under_a_budget_of_two_answer_every_request(budget: OvmsProcess, expected) -> None:
    wait_for_ready(budget, timeout_s=WAIT_S)
    wait_until(lambda: len(not_resident(budget)) == 1, "one resnet out of memory after the start")
    before = lifecycle(budget)
    answers: list[tuple[str, str, np.ndarray | str]] = []

    def client(offset: int, over_grpc: bool) -> None:
        for step in range(6):
            model = RESNETS[(offset + step) % len(RESNETS)]
            try:
                if over_grpc:
                    answers.append((model, "grpc", grpc_predict(budget, model)))
                else:
                    reply = rest_predict(budget, model)
                    reply.raise_for_status()
                    answers.append((model, "rest", np.array(reply.json()["outputs"], np.float32)))
            except (grpc.RpcError, requests.RequestException) as error:
                answers.append((model, "grpc" if over_grpc else "rest", repr(error)))

    with StatesSeen(budget) as states:
        clients = [threading.Thread(target=client, args=(offset, offset != 1)) for offset in range(3)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=4 * WAIT_S)
    failures = [(model, via, answer) for model, via, answer in answers if isinstance(answer, str)]
    assert not failures and len(answers) == 18, failures
    for _, _, answer in answers:
        assert_same(answer, expected)
    assert ("LOADING", LOADING_ON_DEMAND) in states.seen
    assert ("AVAILABLE", NOT_RESIDENT) in states.seen

    wait_until(lambda: len(not_resident(budget)) == 1, "two resnets in memory, one out, at rest")
    after = lifecycle(budget)
    moved = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    print("loads and unloads during the rotation:", {key: value for key, value in moved.items() if value})
    assert all(moved["loads", model, "demand"] >= 1 for model in RESNETS), moved
    assert sum(moved["unloads", model, "budget"] for model in RESNETS) >= 3, moved
    assert all(moved["loads", model, "startup"] == 0 for model in RESNETS)
    for model in RESNETS:
        loads = sum(after["loads", model, reason] for reason in ("startup", "demand", "reload"))
        assert after["seconds", model, "count"] == loads
        assert 0 < after["seconds", model, "sum"] < 60 * loads
    document = requests.get(f"{budget.rest_url}/v1/status", timeout=10).json()
    assert sorted(row["resident"] for row in document["versions"]) == [False, True, True]
    table = ovms_status("--url", budget.rest_url)
    assert table.returncode == 0, table.stderr
    rows = [re.split(r"\s{2,}", line) for line in table.stdout.splitlines() if line.partition(" ")[0] in RESNETS]
    assert sorted(row[2] for row in rows) == ["AVAILABLE", "AVAILABLE", "ON DEMAND"], table.stdout


def test_a_request_that_cannot_wait_for_the_load_is_unavailable_with_retry_after(budget: OvmsProcess, expected) -> None:
    wait_until(lambda: len(not_resident(budget)) == 1, "one resnet out of memory")
    (model,) = not_resident(budget)
    totals = lifecycle(budget)
    load_s = totals["seconds", model, "sum"] / totals["seconds", model, "count"]
    timeout_s = load_s / 3  # well below the load, well above one inference of resnet

    started = time.monotonic()
    refused = rest_predict(budget, model, timeout_s)
    assert refused.status_code == 503, refused.text
    assert f"Model {model} version 1 is loading" in refused.json()["error"]
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after >= 1
    assert time.monotonic() - started < retry_after, "answered at once, not at a deadline"
    time.sleep(retry_after)
    served = rest_predict(budget, model, timeout_s)
    assert served.status_code == 200, f"{served.text} (retried {retry_after} s later, load {load_s:.2f} s)"
    assert_same(np.array(served.json()["outputs"], np.float32), expected)

    wait_until(lambda: len(not_resident(budget)) == 1 and model not in not_resident(budget), "another out")
    (model,) = not_resident(budget)
    with pytest.raises(grpc.RpcError) as refusal:
        grpc_predict(budget, model, timeout_s)
    assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"Model {model} version 1 is loading" in refusal.value.details()
    retry_after = int(dict(refusal.value.trailing_metadata())["retry-after"])
    assert retry_after >= 1
    time.sleep(retry_after)
    assert_same(grpc_predict(budget, model, timeout_s), expected)


@pytest.fixture(scope="module")
def idle(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvmsProcess]:
    """The api of a stack whose worker unloads `digits` after IDLE_UNLOAD_S without requests (no budget)."""
    models = {"digits": {"base_path": str(models_dir / "digits"), "idle_unload_s": IDLE_UNLOAD_S}}
    with worker_and_api(serving(models, tmp_path_factory.mktemp("idle"), redis_url)) as (_, api):
        yield api


def digits_predict(api: OvmsProcess, rows: np.ndarray) -> requests.Response:
    return requests.post(f"{api.rest_url}/v1/models/digits:predict", json={"instances": rows.tolist()}, timeout=WAIT_S)


def test_a_model_unused_for_idle_unload_s_leaves_memory_and_the_next_request_loads_it(
    idle: OvmsProcess, models_dir: Path
) -> None:
    rows = np.load(models_dir / "data" / "imgs.npy")[:4]
    compiled = ov.Core().compile_model(str(models_dir / "digits" / "1" / "model.xml"), "CPU")
    local = compiled.create_infer_request().infer({0: rows})[compiled.output(0)]
    wait_for_ready(idle, timeout_s=WAIT_S)

    def counts() -> tuple[float, float]:
        totals = lifecycle(idle)
        return totals.get(("unloads", "digits", "idle"), 0), totals.get(("loads", "digits", "demand"), 0)

    wait_until(lambda: status(idle, "digits") == ("AVAILABLE", NOT_RESIDENT), "digits out of memory after its start")
    assert requests.get(f"{idle.rest_url}/v1/health/ready", timeout=10).status_code == 200, "still served"
    assert requests.get(f"{idle.rest_url}/v2/models/digits/ready", timeout=10).status_code == 200
    wait_until(lambda: counts() == (1, 0), "the unload counted")

    started = time.monotonic()
    reply = digits_predict(idle, rows)
    print(f"first digits request after the unload answered in {(time.monotonic() - started) * 1000:.0f} ms")
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(np.array(reply.json()["predictions"]), local, rtol=1e-5, atol=1e-6)
    wait_until(lambda: counts() == (1, 1), "the load on demand counted", timeout_s=IDLE_UNLOAD_S)
    wait_until(lambda: status(idle, "digits") == ("AVAILABLE", "OK"), "digits in memory", timeout_s=IDLE_UNLOAD_S)

    wait_until(lambda: status(idle, "digits") == ("AVAILABLE", NOT_RESIDENT), "digits out of memory again")
    assert time.monotonic() - started >= IDLE_UNLOAD_S, "not before it was unused that long"
    wait_until(lambda: counts() == (2, 1), "the second unload counted")
