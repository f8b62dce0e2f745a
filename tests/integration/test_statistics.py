"""Inference statistics (Triton's statistics extension) through the real stack: one `ovms api` and two `ovms worker`
processes on a Redis of the module's own, driven with TF Serving REST predicts and async jobs, read back at
GET /v2/models[/{m}[/versions/{v}]]/stats and gRPC ModelStatistics — also by the official Triton clients, whose
gRPC messages take the document as it is — and checked against the Prometheus histograms, across batching,
failures, two workers summed, worker restarts and a worker killed mid-load."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import requests
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from api.protos import grpc_service_pb2 as pb
from api.protos import grpc_service_pb2_grpc
from tests.support.jobs import post_npy, wait_for_end
from tests.support.stack import REPO, Fleet, OvmsProcess, private_redis, wait_for_ready, wait_for_workers

TIMEOUT_S = 30
FLUSHED_WITHIN_S = 5.0  # a worker flushes every second: well within this
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0] * 8]
MODEL_NOT_FOUND = "Model with requested name is not found"
VERSION_NOT_FOUND = "Model with requested version is not found"

redis_url = pytest.fixture(scope="module", name="redis_url")(private_redis)


@pytest.fixture(scope="module")
def cluster(models_dir: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """`versioned` (both versions), `digits`, and `anyshape` (digits with every dimension dynamic: OpenVINO, on the
    worker, refuses rows that are not 64 wide) on two workers behind one api."""
    config = tmp_path_factory.mktemp("statistics") / "config.json"
    models = [
        {"name": "versioned", "base_path": str(models_dir / "versioned"), "model_version_policy": {"all": {}}},
        {"name": "digits", "base_path": str(models_dir / "digits")},
        {"name": "anyshape", "base_path": str(models_dir / "digits"), "shape": "auto"},
    ]
    config.write_text(json.dumps({"model_config_list": [{"config": model} for model in models]}))
    with Fleet(["--config_path", str(config), "--broker_url", redis_url]) as started:
        api = started.start_api()
        for _ in range(2):
            started.start_worker()
        wait_for_workers(api, 2)
        wait_for_ready(api)
        yield started


# --------------------------------------------------------------------------- helpers


def stats_url(api: OvmsProcess, model: str | None = None, version: int | str | None = None) -> str:
    url = f"{api.rest_url}/v2/models"
    if model is not None:
        url += f"/{model}"
        if version is not None:
            url += f"/versions/{version}"
    return url + "/stats"


def stats(api: OvmsProcess, model: str | None = None, version: int | str | None = None) -> list[dict[str, Any]]:
    reply = requests.get(stats_url(api, model, version), timeout=TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    return reply.json()["model_stats"]


def stat(api: OvmsProcess, model: str, version: int) -> dict[str, Any]:
    (entry,) = stats(api, model, version)
    assert (entry["name"], entry["version"]) == (model, str(version))
    return entry


def wait_for_stat(
    api: OvmsProcess, model: str, version: int, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The version's statistics once `ready` says the workers flushed what the test sent."""
    deadline = time.monotonic() + FLUSHED_WITHIN_S
    while not ready(entry := stat(api, model, version)):
        assert time.monotonic() < deadline, f"not flushed within {FLUSHED_WITHIN_S} s: {entry}"
        time.sleep(0.2)
    return entry


def successes(entry: dict[str, Any]) -> int:
    return entry["inference_stats"]["success"]["count"]


def batches(entry: dict[str, Any]) -> dict[int, int]:
    """Executions by batch size."""
    return {row["batch_size"]: row["compute_infer"]["count"] for row in entry["batch_stats"]}


def grew(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {size: count - before.get(size, 0) for size, count in after.items() if count != before.get(size, 0)}


def predict(
    api: OvmsProcess, model: str, instances: Any, version: int | None = None, session: Any = requests
) -> requests.Response:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return session.post(api.rest_url + path, json={"instances": instances}, timeout=TIMEOUT_S)


def scrape(api: OvmsProcess) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"{api.rest_url}/metrics", timeout=TIMEOUT_S).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict, family: str, /, **labels: str) -> float:
    return samples.get((family, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------- counting


def test_sequential_predicts_are_counted_exactly_per_version_and_agree_with_prometheus(cluster: Fleet) -> None:
    api = cluster.api
    one, two = stat(api, "versioned", 1), stat(api, "versioned", 2)
    metrics_before = scrape(api)
    started_ms = time.time() * 1000
    for _ in range(5):
        assert predict(api, "versioned", [[1, 2, 3, 4]], version=1).status_code == 200
    for _ in range(3):
        assert predict(api, "versioned", [[1, 2, 3, 4], [5, 6, 7, 8]], version=2).status_code == 200
    one_after = wait_for_stat(api, "versioned", 1, lambda s: successes(s) >= successes(one) + 5)
    two_after = wait_for_stat(api, "versioned", 2, lambda s: successes(s) >= successes(two) + 3)
    metrics_after = scrape(api)

    for before, after, requests_, rows in ((one, one_after, 5, 1), (two, two_after, 3, 2)):
        assert after["inference_count"] - before["inference_count"] == requests_ * rows
        assert after["execution_count"] - before["execution_count"] == requests_  # one at a time: no batching
        assert grew(batches(before), batches(after)) == {rows: requests_}
        assert successes(after) - successes(before) == requests_
        assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
        for kind in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert after["inference_stats"][kind]["count"] == successes(after)
        assert started_ms <= after["last_inference"] <= time.time() * 1000

    def grown(entry: dict, before: dict, kind: str) -> float:
        return (entry["inference_stats"][kind]["ns"] - before["inference_stats"][kind]["ns"]) / 1000  # µs

    def prometheus(family: str, /, **labels: str) -> float:
        return metric(metrics_after, family, **labels) - metric(metrics_before, family, **labels)

    labels = {"name": "versioned", "version": "2"}
    # The same inference time, measured once by the worker: both sums agree to rounding.
    assert grown(two_after, two, "compute_infer") == pytest.approx(
        prometheus("ovms_inference_time_us_sum", **labels), abs=3
    )
    assert grown(two_after, two, "compute_infer") > 0
    # Queued from entering the api's lane (Prometheus: from publishing, a little later) to the batch's compute.
    queue_us = grown(two_after, two, "queue")
    assert queue_us >= prometheus("ovms_queue_time_us_sum", **labels) - 3
    # A request's time in all as the worker sees it ends before the api's answer: less than the api's time.
    success_us = grown(two_after, two, "success")
    assert queue_us < success_us < prometheus("ovms_request_time_us_sum", **labels, interface="rest", tenant="")


def test_concurrent_predicts_are_batched_and_every_row_counted(cluster: Fleet) -> None:
    api = cluster.api
    before = stat(api, "digits", 1)
    session = requests.Session()
    sent = 256
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda _: predict(api, "digits", DIGIT, session=session), range(sent)))
    assert all(reply.status_code == 200 for reply in replies)
    assert max(int(reply.headers["X-Ovms-Batch-Size"]) for reply in replies) > 1

    after = wait_for_stat(api, "digits", 1, lambda s: successes(s) >= successes(before) + sent)
    executed = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == sent
    assert successes(after) - successes(before) == sent
    assert executed < sent
    by_size = grew(batches(before), batches(after))
    assert sum(by_size.values()) == executed
    assert sum(size * count for size, count in by_size.items()) == sent
    assert max(by_size) <= 16  # the default max_batch_size


def test_two_workers_counts_are_summed(cluster: Fleet) -> None:
    api = cluster.api
    before = stat(api, "versioned", 2)
    served: dict[str, int] = {}
    session = requests.Session()
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(10):  # coalescing may put a small burst on one worker: a few rounds make both show
            for reply in pool.map(lambda _: predict(api, "versioned", [[1, 2, 3, 4]], 2, session), range(48)):
                assert reply.status_code == 200
                served[reply.headers["X-Ovms-Worker"]] = served.get(reply.headers["X-Ovms-Worker"], 0) + 1
            if len(served) == 2:
                break
    assert len(served) == 2, f"one worker served everything: {served}"
    total = sum(served.values())
    after = wait_for_stat(api, "versioned", 2, lambda s: successes(s) >= successes(before) + total)
    assert successes(after) - successes(before) == total
    assert after["inference_count"] - before["inference_count"] == total


def test_worker_side_failures_count_and_refusals_by_the_api_do_not(cluster: Fleet) -> None:
    api = cluster.api
    anyshape, digits = stat(api, "anyshape", 1), stat(api, "digits", 1)
    for _ in range(3):  # OpenVINO cannot run 3-wide rows through digits: the worker fails them
        reply = predict(api, "anyshape", [[1, 2, 3]])
        assert reply.status_code == 412, reply.text
    for _ in range(3):  # the api refuses these before any worker sees them
        assert predict(api, "digits", [[1, 2, 3]]).status_code == 400
        assert requests.post(f"{api.rest_url}/v1/models/digits:predict", data="{", timeout=TIMEOUT_S).status_code == 400
        assert predict(api, "digits", DIGIT, version=7).status_code == 404

    after = wait_for_stat(
        api,
        "anyshape",
        1,
        lambda s: s["inference_stats"]["fail"]["count"] >= anyshape["inference_stats"]["fail"]["count"] + 3,
    )
    failed = after["inference_stats"]["fail"]
    assert failed["count"] - anyshape["inference_stats"]["fail"]["count"] == 3
    assert failed["ns"] > anyshape["inference_stats"]["fail"]["ns"]
    assert (successes(after), after["execution_count"]) == (successes(anyshape), anyshape["execution_count"])
    time.sleep(1.5)  # a flush later: still nothing for digits
    assert stat(api, "digits", 1)["inference_stats"]["fail"] == digits["inference_stats"]["fail"]


def test_an_async_job_counts_each_chunk_as_a_request_with_its_rows(cluster: Fleet) -> None:
    api = cluster.api
    before = stat(api, "digits", 1)
    reply = post_npy(api.rest_url, "digits", np.ones((300, 64), np.float32))
    assert reply.status_code == 202, reply.text
    assert wait_for_end(api.rest_url + reply.json()["status_url"], 60)["state"] == "SUCCESS"
    after = wait_for_stat(api, "digits", 1, lambda s: s["inference_count"] >= before["inference_count"] + 300)
    assert after["inference_count"] - before["inference_count"] == 300
    assert successes(after) - successes(before) == 2  # chunks of 256 and 44 samples
    assert grew(batches(before), batches(after)) == {256: 1, 44: 1}


# --------------------------------------------------------------------------- the routes and their document


def test_listings_unknown_names_and_the_metrics_of_the_route(cluster: Fleet) -> None:
    api = cluster.api
    before = scrape(api)
    listed = [(entry["name"], entry["version"]) for entry in stats(api)]
    assert listed == [("anyshape", "1"), ("digits", "1"), ("versioned", "1"), ("versioned", "2")]
    assert [entry["version"] for entry in stats(api, "versioned")] == ["1", "2"]
    assert [entry["version"] for entry in stats(api, "versioned", 0)] == ["1", "2"]  # 0: every version
    assert stat(api, "versioned", 2)["name"] == "versioned"

    for url, status, message in (
        (stats_url(api, "invented"), 404, MODEL_NOT_FOUND),
        (stats_url(api, "invented", 1), 404, MODEL_NOT_FOUND),
        (stats_url(api, "versioned", 9), 404, VERSION_NOT_FOUND),
        (stats_url(api, "versioned", "x"), 400, "Invalid version: x"),
    ):
        reply = requests.get(url, timeout=TIMEOUT_S)
        assert (reply.status_code, reply.json()) == (status, {"error": message}), url
    after = scrape(api)

    def counted(family: str, /, **labels: str) -> float:
        full = {"interface": "v2-rest", "method": "ModelStatistics", "tenant": "", **labels}
        return metric(after, family, **full) - metric(before, family, **full)

    assert counted("ovms_requests_success_total", name="", version="") == 1
    assert counted("ovms_requests_success_total", name="versioned", version="") == 2
    assert counted("ovms_requests_success_total", name="versioned", version="2") == 1
    assert counted("ovms_requests_fail_total", name="", version="", code="NOT_FOUND") == 2  # invented: no label
    assert counted("ovms_requests_fail_total", name="versioned", version="", code="NOT_FOUND") == 1


def test_invented_names_make_no_redis_keys(cluster: Fleet, redis_url: str) -> None:
    api = cluster.api
    for index in range(20):
        predict(api, f"invented{index}", [[1]])
        predict(api, "versioned", [[1, 2, 3, 4]], version=100 + index)
        requests.get(stats_url(api, f"invented{index}"), timeout=TIMEOUT_S)
        requests.get(stats_url(api, "versioned", 100 + index), timeout=TIMEOUT_S)
    time.sleep(1.5)  # a flush later
    keys = {key.decode() for key in redis.Redis.from_url(redis_url).scan_iter(match="ovms:stats:*")}
    assert keys <= {f"ovms:stats:{name}" for name in ("anyshape:1", "digits:1", "versioned:1", "versioned:2")}


def test_the_triton_client_reads_the_document_and_its_grpc_messages_take_it(cluster: Fleet) -> None:
    """tritonclient's HTTP client asks the routes; each answer is parsed into Triton's own gRPC
    ModelStatisticsResponse with json_format.ParseDict (unknown fields refused), as a gRPC frontend will."""
    assert TRITON_PYTHON.exists(), f"{TRITON_PYTHON} is missing: `make test` installs it (`make triton-client`)"
    script = """
import json, sys
import tritonclient.http as http
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
client = http.InferenceServerClient(sys.argv[1])
answers = [client.get_inference_statistics(), client.get_inference_statistics("versioned"),
           client.get_inference_statistics("versioned", "2")]
parsed = [json_format.ParseDict(answer, service_pb2.ModelStatisticsResponse()) for answer in answers]
print(json.dumps([[(s.name, s.version, s.inference_count, s.inference_stats.success.count) for s in p.model_stats]
                  for p in parsed]))
"""
    run = subprocess.run(
        [str(TRITON_PYTHON), "-c", script, f"localhost:{cluster.api.rest_port}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    everything, versioned, two = json.loads(run.stdout)
    ours = {(e["name"], e["version"]): [e["inference_count"], successes(e)] for e in stats(cluster.api)}
    assert {(name, version): counts for name, version, *counts in everything} == ours
    assert [(name, version) for name, version, *_ in versioned] == [("versioned", "1"), ("versioned", "2")]
    assert [entry[:2] for entry in two] == [["versioned", "2"]]


def test_grpc_model_statistics_answer_the_same_document(cluster: Fleet) -> None:
    """ModelStatistics on the KServe v2 gRPC service: the REST document as Triton's message, through our
    stubs and through tritonclient.grpc's get_inference_statistics; unknown models and versions as REST."""
    with grpc.insecure_channel(cluster.api.grpc_address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def ask(name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
            return stub.ModelStatistics(pb.ModelStatisticsRequest(name=name, version=version), timeout=TIMEOUT_S)

        for name, version in (("", ""), ("versioned", ""), ("versioned", "2")):
            rest = requests.get(stats_url(cluster.api, name or None, version or None), timeout=TIMEOUT_S).json()
            assert ask(name, version) == json_format.ParseDict(rest, pb.ModelStatisticsResponse())
        assert [(entry.name, entry.version) for entry in ask("versioned", "2").model_stats] == [("versioned", "2")]
        for name, version, code, message in (
            ("invented", "", grpc.StatusCode.NOT_FOUND, MODEL_NOT_FOUND),
            ("versioned", "9", grpc.StatusCode.NOT_FOUND, VERSION_NOT_FOUND),
            ("versioned", "x", grpc.StatusCode.INVALID_ARGUMENT, "Invalid version: x"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                ask(name, version)
            assert (caught.value.code(), caught.value.details()) == (code, message)

    assert TRITON_PYTHON.exists(), f"{TRITON_PYTHON} is missing: `make test` installs it (`make triton-client`)"
    script = """
import json, sys
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(sys.argv[1])
answers = [client.get_inference_statistics(as_json=True),
           client.get_inference_statistics("versioned", "2", as_json=True)]
print(json.dumps([[(s["name"], s["version"]) for s in answer["model_stats"]] for answer in answers]))
"""
    run = subprocess.run(
        [str(TRITON_PYTHON), "-c", script, cluster.api.grpc_address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    listed, two = json.loads(run.stdout)
    assert listed == [[entry["name"], entry["version"]] for entry in stats(cluster.api)]
    assert two == [["versioned", "2"]]


# --------------------------------------------------------------------------- workers that stop


def test_the_totals_survive_the_workers_restart(cluster: Fleet) -> None:
    api = cluster.api
    prior = successes(stat(api, "versioned", 1))
    for _ in range(4):
        assert predict(api, "versioned", [[1, 2, 3, 4]], version=1).status_code == 200
    before = wait_for_stat(api, "versioned", 1, lambda s: successes(s) >= prior + 4)
    graceful, killed = cluster.workers[:2]
    graceful.stop()  # SIGTERM: its last counts are flushed on the way out
    time.sleep(1.5)  # the other one flushed what it counted
    killed.signal(signal.SIGKILL)
    killed.stop()
    cluster.workers[:2] = []
    for _ in range(2):
        cluster.start_worker()
    wait_for_workers(api, 2, timeout_s=30)
    wait_for_ready(api)
    assert stat(api, "versioned", 1) == before
    assert predict(api, "versioned", [[1, 2, 3, 4]], version=1).status_code == 200
    after = wait_for_stat(api, "versioned", 1, lambda s: successes(s) > successes(before))
    assert successes(after) == successes(before) + 1


def test_a_worker_killed_under_load_loses_at_most_its_last_second(cluster: Fleet) -> None:
    api = cluster.api
    before = successes(stat(api, "versioned", 1))
    answers: list[tuple[float, str]] = []  # (when, worker) of each success
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            reply = predict(api, "versioned", [[1, 2, 3, 4]], version=1, session=session)
            if reply.status_code == 200:
                answers.append((time.monotonic(), reply.headers["X-Ovms-Worker"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        victim = cluster.workers[0]
        victim_id = victim.worker_id()
        assert any(worker == victim_id for _, worker in answers), "the victim served nothing before its kill"
        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        time.sleep(3)  # the other worker serves on, and runs again what the victim held
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    victim.stop()
    cluster.workers.remove(victim)

    # What the victim counted since its last flush (at most about a second before the kill) is lost.
    unflushed = sum(1 for when, worker in answers if worker == victim_id and when > killed_at - 1.5)
    after = successes(wait_for_stat(api, "versioned", 1, lambda s: successes(s) >= before + len(answers) - unflushed))
    assert len(answers) - unflushed <= after - before <= len(answers) + len(threads)
