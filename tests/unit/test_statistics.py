"""Inference statistics: counted by a worker in memory (inference.statistics), flushed in its heartbeat's pipeline to
one Redis hash per model version (tasks.statistics), and read back by the api as Triton's document
(api.dataplane.statistics) — on a real Redis, with the workers' own heartbeat and runtime over a real model."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from api.dataplane.statistics import StatisticsService
from inference.errors import MODEL_NOT_FOUND, NO_LIVE_WORKER, VERSION_NOT_FOUND, NotFound, Unavailable
from inference.manager import ModelManager
from inference.model_config import ModelConfig
from inference.request import InferenceRequest
from inference.signature import ModelSignature, TensorSpec
from inference.states import ModelReport, VersionReport, VersionState, VersionStatus
from inference.statistics import (
    MAX_BATCH_SIZES,
    STARTUP,
    Execution,
    InferenceStatistics,
    VersionCounts,
    bucket_middle_ms,
    latency_bucket,
    load_field,
)
from tasks.broker import free_port
from tasks.heartbeat import Heartbeat
from tasks.link import RedisLink
from tasks.messages import ComputedOutputs, RequestFailure, pack_requests
from tasks.registry import RegistryView
from tasks.routing import payload_key
from tasks.runtime import WorkerRuntime
from tasks.statistics import (
    MAX_FIELDS,
    RECENT_SLOT_S,
    RECENT_TTL_S,
    RECENT_WINDOW_S,
    STATISTICS_TTL_S,
    read_fields,
    read_recent,
    read_totals,
    recent_seconds,
    statistics_key,
)

SIGNATURE = ModelSignature({"x": TensorSpec("x", "FP32", (-1, 4))}, {"y": TensorSpec("y", "FP32", (-1, 4))})
EXECUTION = Execution(rows=3, compute_input_ns=10, compute_infer_ns=100, compute_output_ns=1)


def serving(*versions: int, state: VersionState = VersionState.AVAILABLE) -> dict[str, ModelReport]:
    """A worker's snapshot: model "m" with `versions` in `state`."""
    reports = {v: VersionReport(VersionStatus(v, state), SIGNATURE) for v in versions}
    return {"m": ModelReport(reports, "", True, 100)}


def flush(store: redis.Redis, statistics: InferenceStatistics, worker_id: str = "w1", *versions: int) -> None:
    """One heartbeat of a worker serving model "m" at `versions` (and flushing `statistics` with it)."""
    Heartbeat(store, worker_id, "CPU", lambda: serving(*versions), statistics).publish()


def counted(store: redis.Redis, version: int = 1) -> VersionCounts:
    return read_totals(store, [("m", version)])[0]


# --------------------------------------------------------------------------- counting in a worker's memory


def test_requests_and_batches_count_per_version_until_taken() -> None:
    statistics = InferenceStatistics()
    statistics.executed("m", 1, EXECUTION)
    statistics.succeeded("m", 1, rows=2, queue_ns=5, request_ns=50, execution=EXECUTION)
    statistics.succeeded("m", 1, rows=1, queue_ns=7, request_ns=70, execution=EXECUTION)
    statistics.failed("m", 1, request_ns=30)
    statistics.failed("m", 2, request_ns=40)
    taken = statistics.take()
    one = taken["m", 1]
    assert (one.inference_count, one.execution_count, one.success_count, one.success_ns) == (3, 1, 2, 120)
    assert (one.fail_count, one.fail_ns, one.queue_ns) == (1, 30, 12)
    assert (one.compute_input_ns, one.compute_infer_ns, one.compute_output_ns) == (20, 200, 2)
    assert abs(one.last_inference_ms - time.time() * 1000) < 5000
    assert [(size, b.count, b.compute_infer_ns) for size, b in one.batches.items()] == [(3, 1, 100)]
    assert (taken["m", 2].fail_count, taken["m", 2].execution_count) == (1, 0)
    assert statistics.take() == {}


def test_counts_given_back_join_the_next_take() -> None:
    statistics = InferenceStatistics()
    statistics.executed("m", 1, EXECUTION)
    taken = statistics.take()
    statistics.executed("m", 1, EXECUTION)
    statistics.give_back(taken)
    again = statistics.take()["m", 1]
    assert (again.execution_count, again.batches[3].count) == (2, 2)


def test_a_flood_of_batch_sizes_keeps_a_bounded_count_in_memory() -> None:
    statistics = InferenceStatistics()
    for size in range(10_000):
        statistics.executed("m", 1, Execution(size, 1, 1, 1))
    counts = statistics.take()["m", 1]
    assert counts.execution_count == 10_000
    assert sorted(counts.batches) == list(range(MAX_BATCH_SIZES))


# --------------------------------------------------------------------------- flushed to Redis, read back


def test_two_workers_flushes_add_up_and_the_latest_inference_wins(store: redis.Redis) -> None:
    first, second = InferenceStatistics(), InferenceStatistics()
    for _ in range(3):
        first.executed("m", 1, EXECUTION)
        first.succeeded("m", 1, 3, 5, 50, EXECUTION)
    second.executed("m", 1, Execution(1, 2, 20, 2))
    second.succeeded("m", 1, 1, 6, 60, Execution(1, 2, 20, 2))
    second.failed("m", 1, 9)
    latest = second.take()
    latest["m", 1].last_inference_ms = 2_000_000_000_000
    second.give_back(latest)
    flush(store, first, "w1", 1)
    flush(store, second, "w2", 1)
    flush(store, first, "w1", 1)  # nothing new: adds nothing

    totals = counted(store)
    assert (totals.inference_count, totals.execution_count, totals.success_count) == (10, 4, 4)
    assert (totals.success_ns, totals.queue_ns, totals.fail_count, totals.fail_ns) == (210, 21, 1, 9)
    assert (totals.compute_input_ns, totals.compute_infer_ns, totals.compute_output_ns) == (32, 320, 5)
    assert totals.last_inference_ms == 2_000_000_000_000
    assert {size: (b.count, b.compute_infer_ns) for size, b in totals.batches.items()} == {3: (3, 300), 1: (1, 20)}


def test_job_chunks_count_apart_as_well_and_a_scrape_reads_just_their_fields(store: redis.Redis) -> None:
    """A job chunk is a request like any other, and is counted apart too (Prometheus' job metrics)."""
    statistics = InferenceStatistics()
    statistics.succeeded("m", 1, 256, 5, 50, EXECUTION, job=True)
    statistics.succeeded("m", 1, 44, 5, 50, EXECUTION, job=True)
    statistics.succeeded("m", 1, 1, 5, 50, EXECUTION)  # a predict
    statistics.failed("m", 1, 30, job=True)
    statistics.failed("m", 1, 30)
    flush(store, statistics, "w1", 1)
    totals = counted(store)
    assert (totals.success_count, totals.inference_count, totals.fail_count) == (3, 301, 2)
    assert (totals.job_chunk_count, totals.job_inference_count, totals.job_fail_count) == (2, 300, 1)
    fields = ("job_chunk_count", "job_fail_count", "job_inference_count")
    assert read_fields(store, [("m", 1), ("m", 7)], fields) == [(2, 1, 300), (0, 0, 0)]
    store.hset(statistics_key("m", 1), "job_fail_count", "not a number")
    store.set(statistics_key("m", 7), "not a hash")
    assert read_fields(store, [("m", 1), ("m", 7)], fields) == [(2, 0, 300), (0, 0, 0)]


def test_totals_live_while_a_worker_serves_the_version_and_no_key_is_made_for_one_never_counted(
    store: redis.Redis,
) -> None:
    statistics = InferenceStatistics()
    statistics.failed("m", 1, 1)
    flush(store, statistics, "w1", 1, 2)
    key = statistics_key("m", 1)
    assert STATISTICS_TTL_S - 5 < store.ttl(key) <= STATISTICS_TTL_S
    store.expire(key, 5)
    flush(store, statistics, "w1", 1, 2)  # serving it renews its expiry, counts or not
    assert store.ttl(key) > 5
    assert not store.exists(statistics_key("m", 2))
    assert counted(store, 2) == VersionCounts()
    assert [k.decode() for k in store.scan_iter(match="ovms:stats:*")] == [key]


def test_a_flood_of_batch_sizes_from_many_workers_keeps_the_hash_bounded(store: redis.Redis) -> None:
    for worker in range(4):
        statistics = InferenceStatistics()
        for size in range(worker * 1000, worker * 1000 + 1000):
            statistics.executed("m", 1, Execution(size, 1, 1, 1))
        flush(store, statistics, f"w{worker}", 1)
    assert store.hlen(statistics_key("m", 1)) <= MAX_FIELDS
    totals = counted(store)
    assert totals.execution_count == 4000
    assert set(range(MAX_BATCH_SIZES)) <= set(totals.batches)  # the first worker's, kept whole
    assert all(batch.count == 1 for batch in totals.batches.values())  # each size's four fields together


def test_a_flush_that_fails_gives_its_counts_back_for_the_next_one(store: redis.Redis) -> None:
    statistics = InferenceStatistics()
    statistics.executed("m", 1, EXECUTION)
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        Heartbeat(nowhere, "w1", "CPU", lambda: serving(1), statistics).publish()
    statistics.executed("m", 1, EXECUTION)
    flush(store, statistics, "w1", 1)
    assert counted(store).execution_count == 2


def test_fields_that_are_not_ours_neither_stop_a_flush_nor_reach_the_totals(store: redis.Redis) -> None:
    key = statistics_key("m", 1)
    store.hset(key, mapping={"success_count": "junk", "batch:x:count": 5, "batch:3:count": "junk", "other": 1})
    statistics = InferenceStatistics()
    statistics.executed("m", 1, EXECUTION)
    statistics.succeeded("m", 1, 3, 5, 50, EXECUTION)
    flush(store, statistics, "w1", 1)
    totals = counted(store)
    assert (totals.success_count, totals.success_ns, totals.execution_count) == (0, 50, 1)
    assert totals.batches[3].count == 0 and totals.batches[3].compute_infer_ns == 100


def test_a_key_that_is_not_a_hash_neither_fails_the_heartbeat_nor_the_reading(store: redis.Redis) -> None:
    store.set(statistics_key("m", 1), "not ours")
    statistics = InferenceStatistics()
    statistics.executed("m", 1, EXECUTION)
    flush(store, statistics, "w1", 1)  # raises nothing
    assert store.get(statistics_key("m", 1)) == b"not ours"
    assert counted(store) == VersionCounts()
    assert statistics.take() == {}  # dropped, not given back for ever


# --------------------------------------------------------------------------- the api's document


@pytest.fixture
def service(store: redis.Redis, core_redis_url: str) -> StatisticsService:
    return StatisticsService(RegistryView(store), store, RedisLink(core_redis_url))


def test_the_document_has_triton_fields_and_lists_the_versions_that_serve(
    store: redis.Redis, service: StatisticsService
) -> None:
    statistics = InferenceStatistics()
    statistics.executed("m", 2, EXECUTION)
    statistics.succeeded("m", 2, 3, 5, 50, EXECUTION)
    flush(store, statistics, "w1", 1, 2)

    document = service.model_statistics("m", None)
    assert [(s["name"], s["version"]) for s in document["model_stats"]] == [("m", "1"), ("m", "2")]
    two = document["model_stats"][1]
    assert (two["inference_count"], two["execution_count"]) == (3, 1)
    assert two["inference_stats"]["success"] == {"count": 1, "ns": 50}
    assert two["inference_stats"]["queue"] == {"count": 1, "ns": 5}
    assert two["inference_stats"]["compute_infer"] == {"count": 1, "ns": 100}
    assert two["inference_stats"]["cache_hit"] == two["inference_stats"]["cache_miss"] == {"count": 0, "ns": 0}
    assert two["batch_stats"] == [
        {
            "batch_size": 3,
            "compute_input": {"count": 1, "ns": 10},
            "compute_infer": {"count": 1, "ns": 100},
            "compute_output": {"count": 1, "ns": 1},
        }
    ]
    assert service.model_statistics(None, None) == document
    assert service.model_statistics("m", 2)["model_stats"] == [two]


def test_unknown_models_and_versions_are_not_found_and_make_no_key(
    store: redis.Redis, service: StatisticsService
) -> None:
    flush(store, InferenceStatistics(), "w1", 1)
    with pytest.raises(NotFound, match=MODEL_NOT_FOUND):
        service.model_statistics("invented", None)
    with pytest.raises(NotFound, match=VERSION_NOT_FOUND):
        service.model_statistics("m", 7)
    assert not list(store.scan_iter(match="ovms:stats:*"))


def test_a_named_version_answers_in_any_state_but_the_listing_needs_one_that_serves(
    store: redis.Redis, service: StatisticsService
) -> None:
    statistics = InferenceStatistics()
    statistics.failed("m", 1, 5)
    Heartbeat(store, "w1", "CPU", lambda: serving(1, state=VersionState.END), statistics).publish()
    assert service.model_statistics("m", 1)["model_stats"][0]["inference_stats"]["fail"] == {"count": 1, "ns": 5}
    with pytest.raises(Unavailable, match=NO_LIVE_WORKER):
        service.model_statistics("m", None)
    assert service.model_statistics(None, None) == {"model_stats": []}


# --------------------------------------------------------------------------- a worker's runtime counts what it serves


@pytest.fixture
def worker(models_dir: Path, store: redis.Redis) -> Iterator[tuple[WorkerRuntime, ModelManager, InferenceStatistics]]:
    """A worker's runtime over `versioned` (both versions, one infer request each), and its counts."""
    statistics = InferenceStatistics()
    config = ModelConfig("versioned", str(models_dir / "versioned"), model_version_policy={"all": {}}, nireq=1)
    models = ModelManager([config], statistics=statistics)
    models.reconcile(initial=True)
    yield WorkerRuntime(models, store, "CPU-test-1-abc", 1 << 30, statistics), models, statistics
    models.close()


def serve(store: redis.Redis, runtime: WorkerRuntime, requests: list[InferenceRequest]) -> dict:
    """Publish-less delivery of one message to the runtime, its tensors where the api would put them."""
    task_id = uuid.uuid4().hex
    for index, request in enumerate(requests):
        request.request_id = f"{task_id}.{index}"
    envelope, payload = pack_requests(requests, {"x": "FP32"})
    store.set(payload_key(task_id), b"".join(payload))
    return runtime.serve(task_id, envelope).results


def request(version: int, rows: int, queued_at: float = 0.0, width: int = 4) -> InferenceRequest:
    x = np.ones((rows, width), np.float32)
    return InferenceRequest("versioned", version, {"x": x}, deadline=time.time() + 30, queued_at=queued_at)


def test_the_runtime_counts_each_request_for_its_version_and_each_batch_once(store: redis.Redis, worker) -> None:
    runtime, models, statistics = worker
    loaded = statistics.take()
    assert {key: counts.lifecycle[load_field(STARTUP)] for key, counts in loaded.items()} == {
        ("versioned", 1): 1,
        ("versioned", 2): 1,
    }
    assert all(replace(counts, lifecycle={}) == VersionCounts() for counts in loaded.values()), "no request ran"
    queued_at = time.time() - 0.5  # the api queued them half a second ago
    results = serve(
        store,
        runtime,
        [request(2, 1, queued_at), request(2, 2, queued_at), request(2, 1), request(2, 1, queued_at, width=5)],
    )
    kinds = [type(entry) for entry in results.values()]
    assert kinds == [ComputedOutputs, ComputedOutputs, ComputedOutputs, RequestFailure]
    serve(store, runtime, [request(9, 1, queued_at)])  # a version this worker does not hold: not counted

    counts = statistics.take()
    assert set(counts) == {("versioned", 2)}
    two = counts["versioned", 2]
    assert (two.success_count, two.inference_count, two.fail_count) == (3, 4, 1)
    assert (two.execution_count, {size: b.count for size, b in two.batches.items()}) == (1, {4: 1})
    assert two.queue_ns >= 2 * 500_000_000 and two.success_ns >= two.queue_ns
    assert two.fail_ns >= 500_000_000
    assert two.compute_infer_ns == 3 * two.batches[4].compute_infer_ns > 0

    statistics.give_back(counts)
    Heartbeat(store, "CPU-test-1-abc", "CPU", models.snapshot, statistics).publish()
    assert read_totals(store, [("versioned", 2)])[0] == two


def test_a_message_past_its_deadline_counts_each_request_as_failed(store: redis.Redis, worker) -> None:
    runtime, _, statistics = worker
    late = [request(1, 1), request(1, 1)]
    for entry in late:
        entry.deadline = time.time() - 1
    assert all(isinstance(e, RequestFailure) for e in serve(store, runtime, late).values())
    one = statistics.take()["versioned", 1]
    assert (one.fail_count, one.success_count, one.execution_count) == (2, 0, 0)


# --------------------------------------------------------------------------- the last minute (ovms status)


def test_a_latency_buckets_middle_is_within_10_percent_of_every_duration_in_it() -> None:
    for step in range(400):
        ns = int(1000 * 1.05**step)  # 1 µs to ~300 s
        assert abs(bucket_middle_ms(latency_bucket(ns)) / (ns / 1e6) - 1) < 0.1, ns


def test_the_last_minute_adds_up_the_workers_and_forgets_what_left_the_window(store: redis.Redis) -> None:
    first, second = InferenceStatistics(), InferenceStatistics()
    for ms in (1, 2, 3):
        first.succeeded("m", 1, 1, 0, ms * 1_000_000, EXECUTION)
    for ms in (4, 100):
        second.succeeded("m", 1, 1, 0, ms * 1_000_000, EXECUTION)
    second.failed("m", 1, 5)
    flush(store, first, "w1", 1)
    flush(store, second, "w2", 1)
    flush(store, first, "w1", 1)  # nothing new: adds nothing
    now = time.time()
    (window,) = read_recent(store, [("m", 1)], now)
    assert (window.succeeded, window.failed) == (5, 1)
    assert window.p50_ms is not None and abs(window.p50_ms / 3 - 1) < 0.1  # the median of 1, 2, 3, 4, 100 ms
    assert window.per_second == pytest.approx(6 / recent_seconds(now))
    assert RECENT_WINDOW_S - RECENT_SLOT_S <= recent_seconds(now) <= RECENT_WINDOW_S
    keys = list(store.scan_iter(match="ovms:recent:m:1:*"))
    assert len(keys) <= 2 and all(0 < store.ttl(key) <= RECENT_TTL_S for key in keys)
    (later,) = read_recent(store, [("m", 1)], now + RECENT_WINDOW_S + RECENT_SLOT_S)
    assert (later.succeeded, later.failed, later.p50_ms) == (0, 0, None)
