"""The api's merged view of the workers (tasks.registry.RegistryView) on a real Redis, fed with documents
written by the workers' own heartbeat (tasks.heartbeat): table-driven merges of several workers' version
states, then how the view resolves requests and reports workers that stop serving."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import pytest
import redis

from inference.errors import (
    MODEL_NOT_FOUND,
    NO_LIVE_WORKER,
    VERSION_NOT_FOUND,
    VERSION_NOT_LOADED,
    VERSION_RETIRED,
    NotFound,
    Unavailable,
    load_failed,
)
from inference.signature import ModelSignature, TensorSpec
from inference.states import ModelReport, Residency, VersionReport, VersionState, VersionStatus
from tasks.heartbeat import HEARTBEAT_TTL_S, Heartbeat
from tasks.registry import MAX_REFUSALS_LOGGED, RegistryView
from tasks.routing import queue_for, worker_key


def signature(width: int) -> ModelSignature:
    return ModelSignature({"x": TensorSpec("x", "FP32", (-1, width))}, {"y": TensorSpec("y", "FP32", (-1, width))})


def status(state: str, width: int = 4, error: str = "") -> VersionReport:
    """A version's status as a worker's ModelManager reports it (a signature once it serves); its number
    is set by `model`."""
    reported = VersionStatus(0, VersionState(state), "UNKNOWN" if error else "OK", error or "OK")
    return VersionReport(reported, signature(width) if state == "AVAILABLE" else None)


def on_demand(state: str, load_s: float = 2.0, since: float = 0.0) -> VersionReport:
    """A version out of memory and servable, as a worker that loads versions on demand reports it: AVAILABLE
    (a request loads it) or LOADING (since `since`, 0: now); its last load took `load_s`."""
    if state == "LOADING" and not since:
        since = time.time()
    reported = VersionStatus(0, VersionState(state))
    return VersionReport(reported, signature(4), Residency(False, load_s, since if state == "LOADING" else 0.0))


def model(
    versions: dict[int, VersionReport],
    *,
    error: str = "",
    active: bool = True,
    max_queue_size: int = 100,
    empty: str = "",
) -> ModelReport:
    """A model's entry in a worker's snapshot (ModelManager.snapshot)."""
    numbered = {v: replace(report, status=replace(report.status, version=v)) for v, report in versions.items()}
    return ModelReport(numbered, error, active, max_queue_size, empty)


@dataclass
class Worker:
    """A worker's heartbeat, published by the workers' own Heartbeat."""

    worker_id: str
    models: dict[str, ModelReport]
    device: str = "CPU"
    loaded: bool = True
    draining: bool = False
    heartbeat: Heartbeat | None = field(default=None, repr=False)

    def publish(self, client: redis.Redis) -> None:
        self.heartbeat = Heartbeat(client, self.worker_id, self.device, lambda: self.models)
        self.heartbeat.loaded = self.loaded
        self.heartbeat.draining = self.draining
        self.heartbeat.publish()


@pytest.fixture
def registry(store: redis.Redis) -> RegistryView:
    """A view that the test refreshes itself (its background thread is not started)."""
    return RegistryView(store)


def publish(store: redis.Redis, *workers: Worker) -> None:
    for worker in workers:
        worker.publish(store)


# Each case: the workers' heartbeats, and per version of model "m": (state, live workers holding it AVAILABLE,
# devices whose queue may serve it).
MERGES = {
    "one worker, one version": (
        [Worker("a", {"m": model({1: status("AVAILABLE")})})],
        {1: ("AVAILABLE", 1, {"CPU"})},
    ),
    "the best state any worker reports wins": (
        [
            Worker("a", {"m": model({1: status("END"), 2: status("LOADING")})}),
            Worker("b", {"m": model({1: status("AVAILABLE"), 2: status("START")})}),
            Worker("c", {"m": model({1: status("UNLOADING"), 2: status("END")})}),
        ],
        {1: ("AVAILABLE", 1, {"CPU"}), 2: ("LOADING", 0, set())},
    ),
    "states rank AVAILABLE > LOADING > START > UNLOADING > END": (
        [
            Worker("a", {"m": model({1: status("START"), 2: status("UNLOADING"), 3: status("END")})}),
            Worker("b", {"m": model({1: status("LOADING"), 2: status("START"), 3: status("UNLOADING")})}),
        ],
        {1: ("LOADING", 0, set()), 2: ("START", 0, set()), 3: ("UNLOADING", 0, set())},
    ),
    "every worker holding a version AVAILABLE counts": (
        [
            Worker("a", {"m": model({1: status("AVAILABLE"), 2: status("AVAILABLE")})}),
            Worker("b", {"m": model({1: status("AVAILABLE"), 2: status("LOADING")})}),
            Worker("c", {"m": model({1: status("AVAILABLE")})}),
        ],
        {1: ("AVAILABLE", 3, {"CPU"}), 2: ("AVAILABLE", 1, {"CPU"})},
    ),
    "a model on two devices counts the workers of both": (
        [
            Worker("a", {"m": model({1: status("AVAILABLE")})}, device="CPU"),
            Worker("b", {"m": model({1: status("AVAILABLE")})}, device="GPU"),
        ],
        {1: ("AVAILABLE", 2, {"CPU", "GPU"})},
    ),
    "a draining worker serves nothing new": (
        [
            Worker("a", {"m": model({1: status("AVAILABLE")})}, draining=True),
            Worker("b", {"m": model({1: status("AVAILABLE")})}, device="GPU"),
        ],
        {1: ("AVAILABLE", 1, {"GPU"})},
    ),
    "an ended version beats one only the catalog remembers": (
        [Worker("a", {"m": model({1: status("END"), 2: status("AVAILABLE")})})],
        {1: ("END", 0, set()), 2: ("AVAILABLE", 1, {"CPU"})},
    ),
    "a version no live worker holds in memory is served: a request loads it": (
        [Worker("a", {"m": model({1: on_demand("AVAILABLE")})})],
        {1: ("AVAILABLE", 1, {"CPU"})},
    ),
    "a version loading on demand is served (its requests wait) and shown LOADING": (
        [
            Worker("a", {"m": model({1: on_demand("AVAILABLE")})}),
            Worker("b", {"m": model({1: on_demand("LOADING")})}),
            Worker("c", {"m": model({1: status("START")})}),
        ],
        {1: ("LOADING", 2, {"CPU"})},
    ),
    "a version in memory anywhere beats one on demand": (
        [
            Worker("a", {"m": model({1: on_demand("LOADING")})}),
            Worker("b", {"m": model({1: status("AVAILABLE")})}, device="GPU"),
        ],
        {1: ("AVAILABLE", 2, {"CPU", "GPU"})},
    ),
    "a failed load is reported with its error until some worker does better": (
        [
            Worker("a", {"m": model({1: status("END", error="broken model.xml")})}),
            Worker("b", {"m": model({1: status("START")})}),
        ],
        {1: ("START", 0, set())},
    ),
}


@pytest.mark.parametrize("workers, expected", MERGES.values(), ids=MERGES.keys())
def test_merge(registry: RegistryView, store: redis.Redis, workers: list[Worker], expected: dict) -> None:
    publish(store, *workers)
    registry.refresh()
    versions = registry.versions("m")
    assert {v: (view.state, view.workers) for v, view in versions.items()} == {
        v: (state, count) for v, (state, count, _) in expected.items()
    }
    for version, (_, _, devices) in expected.items():
        view = versions[version]
        assert (view.queue is not None) == bool(devices), "served exactly where some device's worker serves it"
        assert view.queue is None or view.queue in {queue_for(device, "m") for device in devices}
        assert (view.signature is not None) == bool(devices)


def test_a_failed_load_keeps_its_error(registry: RegistryView, store: redis.Redis) -> None:
    publish(store, Worker("a", {"m": model({1: status("END", error="broken model.xml")})}))
    registry.refresh()
    view = registry.versions("m")[1]
    assert (view.state, view.status.error_code, view.status.error_message) == ("END", "UNKNOWN", "broken model.xml")


def test_catalog_only_versions_are_unavailable(registry: RegistryView, store: redis.Redis) -> None:
    """A worker that served versions 1 and 2 is gone; its catalog entry remains."""
    gone = Worker("a", {"m": model({1: status("AVAILABLE"), 2: status("AVAILABLE")})})
    publish(store, gone)
    store.delete(worker_key("a"))
    registry.refresh()
    assert {v: view.state for v, view in registry.versions("m").items()} == {1: "UNKNOWN", 2: "UNKNOWN"}
    assert registry.versions("m")[1].status.error_message == NO_LIVE_WORKER
    with pytest.raises(Unavailable, match=NO_LIVE_WORKER):
        registry.resolve("m", None)


def test_the_signature_comes_from_the_serving_worker(registry: RegistryView, store: redis.Redis) -> None:
    publish(
        store,
        Worker("a", {"m": model({1: status("LOADING", width=7)}, max_queue_size=5)}, device="GPU"),
        Worker("b", {"m": model({1: status("AVAILABLE", width=3)}, max_queue_size=5)}),
    )
    registry.refresh()
    target = registry.resolve("m", 1)
    assert target.signature == signature(3)
    assert (target.queue, target.workers, target.max_queue_size) == (queue_for("CPU", "m"), 1, 5)


RESOLVE = {
    "no version: the highest AVAILABLE": ({1: "AVAILABLE", 2: "AVAILABLE", 3: "LOADING"}, None, 2),
    "version 0 means none": ({1: "AVAILABLE", 2: "END"}, 0, 1),
    "a named version": ({1: "AVAILABLE", 2: "AVAILABLE"}, 1, 1),
    "still loading": ({1: "LOADING"}, 1, NotFound(VERSION_NOT_LOADED)),
    "waiting for its files": ({1: "START"}, 1, NotFound(VERSION_NOT_LOADED)),
    "none loaded yet": ({1: "START", 2: "LOADING"}, None, NotFound(VERSION_NOT_LOADED)),
    "unloading": ({1: "UNLOADING", 2: "AVAILABLE"}, 1, NotFound(VERSION_RETIRED)),
    "ended": ({1: "END", 2: "AVAILABLE"}, 1, NotFound(VERSION_RETIRED)),
    "every version ended": ({1: "END"}, None, Unavailable(NO_LIVE_WORKER)),
    "no such version": ({1: "AVAILABLE"}, 7, NotFound(VERSION_NOT_FOUND)),
    "a version that failed to load, named": ({1: "FAILED", 2: "AVAILABLE"}, 1, NotFound(load_failed(1, "bad xml"))),
    "only failed versions: the highest one's": ({1: "FAILED", 2: "FAILED"}, None, NotFound(load_failed(2, "bad xml"))),
    "one still loading beside a failed one": ({1: "LOADING", 2: "FAILED"}, None, NotFound(VERSION_NOT_LOADED)),
}


def reported(state: str) -> VersionReport:
    """FAILED: a version that ended because it did not load ("bad xml")."""
    return status("END", error="bad xml") if state == "FAILED" else status(state)


@pytest.mark.parametrize("states, asked, expected", RESOLVE.values(), ids=RESOLVE.keys())
def test_resolve(registry: RegistryView, store: redis.Redis, states: dict, asked: int | None, expected) -> None:
    publish(store, Worker("a", {"m": model({v: reported(state) for v, state in states.items()})}))
    registry.refresh()
    if isinstance(expected, Exception):
        with pytest.raises(type(expected), match=re.escape(expected.message)):
            registry.resolve("m", asked)
    else:
        assert registry.resolve("m", asked).version == expected


def test_a_version_out_of_memory_resolves_with_when_it_is_expected_in_memory(
    registry: RegistryView, store: redis.Redis
) -> None:
    started = time.time() - 1.0
    publish(
        store,
        Worker("a", {"m": model({1: on_demand("AVAILABLE", load_s=2.0), 2: status("AVAILABLE")})}),
        Worker("b", {"m": model({1: on_demand("LOADING", load_s=4.0, since=started)})}),
    )
    registry.refresh()
    loading = registry.resolve("m", 1)
    assert (loading.resident, loading.may_leave, loading.workers, loading.loading_on) == (False, True, 2, "b")
    assert loading.ready_at == pytest.approx(started + 4.0)
    publish(store, Worker("b", {"m": model({1: on_demand("AVAILABLE", load_s=3.0)})}))
    registry.refresh()
    waiting = registry.resolve("m", 1)
    assert waiting.ready_at == pytest.approx(time.time() + 2.0, abs=0.5), "the quickest worker's last load"
    assert (waiting.loading_on, registry.resolve("m", None).version) == ("", 2)
    served = registry.resolve("m", 2)
    assert (served.resident, served.ready_at, served.may_leave) == (True, None, False), "reported as always was"


def test_an_unknown_model_is_not_found_and_an_unreadable_one_unavailable(
    registry: RegistryView, store: redis.Redis
) -> None:
    publish(store, Worker("a", {"m": model({}, error="cannot list gs://bucket/m")}))
    registry.refresh()
    with pytest.raises(NotFound, match=MODEL_NOT_FOUND):
        registry.resolve("other", None)
    with pytest.raises(Unavailable, match="cannot list gs://bucket/m"):
        registry.resolve("m", None)


def test_a_model_whose_repository_offers_no_version_is_not_found_with_the_reason(
    registry: RegistryView, store: redis.Redis
) -> None:
    publish(store, Worker("a", {"m": model({}, empty="/models/m: holds no version directories")}))
    registry.refresh()
    said = f"{VERSION_NOT_FOUND}: /models/m: holds no version directories"
    for look_up in (lambda: registry.versions("m"), lambda: registry.resolve("m", None)):
        with pytest.raises(NotFound) as raised:
            look_up()
        assert raised.value.message == said


def test_which_workers_and_models_are_reported(registry: RegistryView, store: redis.Redis) -> None:
    publish(
        store,
        Worker("a", {"m": model({1: status("AVAILABLE")}), "old": model({1: status("END")}, active=False)}),
        Worker("b", {"m": model({1: status("LOADING")})}, loaded=False),
        Worker("c", {"n": model({1: status("AVAILABLE")})}, device="GPU", draining=True),
    )
    registry.refresh()
    assert sorted(registry.live_workers()) == ["a", "b"]
    assert registry.loaded_workers() == {"a"}
    assert registry.queues() == [queue_for("CPU", "m"), queue_for("CPU", "old")]
    assert registry.served_model_names() == ["m", "old"]
    assert registry.served_model_names(active_only=True) == ["m"]
    assert registry.knows("n"), "the catalog remembers what a draining worker served"


def test_a_redis_restarted_empty_does_not_forget_known_models(registry: RegistryView, store: redis.Redis) -> None:
    publish(store, Worker("a", {"m": model({1: status("AVAILABLE")})}))
    registry.refresh()
    store.flushdb()
    registry.refresh()
    with pytest.raises(Unavailable, match=NO_LIVE_WORKER):
        registry.resolve("m", None)


def test_workers_that_stop_serving_are_reported_with_the_queues_still_consumed(store: redis.Redis) -> None:
    """The test refreshes; the view's background thread reports (and does no refresh of its own here)."""
    calls: list[tuple[set[str], set[str]]] = []
    registry = RegistryView(store, 60, on_workers_gone=lambda lost, queues: calls.append((lost, queues)))
    cpu = Worker("a", {"m": model({1: status("AVAILABLE")})})
    gpu = Worker("b", {"m": model({1: status("AVAILABLE")})}, device="GPU")
    publish(store, cpu, gpu)
    registry.start()
    try:
        assert calls == []
        gpu.draining = True
        publish(store, gpu)
        registry.refresh()
        assert reports(calls, 1) == [(set(), {queue_for("CPU", "m")})], "draining: stopped serving, holds its work"
        store.delete(worker_key("b"))
        registry.refresh()
        assert reports(calls, 2)[1:] == [({"b"}, {queue_for("CPU", "m")})], "its heartbeat lapsed: what it held is lost"
        registry.refresh()
        assert len(reports(calls, 2, settle_s=0.2)) == 2, "reported once"
        assert cpu.heartbeat is not None
        cpu.heartbeat.stop()
        registry.refresh()
        assert reports(calls, 3)[2:] == [({"a"}, set())]
    finally:
        registry.stop()


def reports(calls: list, count: int, settle_s: float = 0.0) -> list:
    """The reports once there are `count` of them (or 5 s passed), after `settle_s` more for any extra one."""
    deadline = time.monotonic() + 5
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(settle_s)
    return calls


def test_junk_in_redis_is_skipped_and_its_log_stays_small(
    registry: RegistryView, store: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Heartbeats nobody can read — nested too deep to parse, or a 1 MB value, each one different — are
    skipped beside a worker that serves; each reason is logged once, cut short, and only so many are kept."""
    publish(store, Worker("w1", {"m": model({1: status("AVAILABLE")})}))
    store.set(worker_key("deep"), "[" * 200_000 + "]" * 200_000)
    for n in range(MAX_REFUSALS_LOGGED + 20):
        store.set(worker_key(f"junk{n}"), f'{{"format": "{n}{"x" * (1 << 20)}"}}')
    with caplog.at_level("WARNING", logger="serving"):
        registry.refresh()
        registry.refresh()
    assert registry.live_workers() == ["w1"]
    assert registry.versions("m")[1].status.state == VersionState.AVAILABLE
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Ignoring")]
    assert len(ignored) == MAX_REFUSALS_LOGGED, "every reason logged once, up to the bound"
    assert max(map(len, ignored)) < 400, "a refused value is not copied into the log"


def test_a_view_that_stopped_refreshing_does_not_speak_for_the_workers(store: redis.Redis) -> None:
    """Readiness trusts the view only while it is current: one not refreshed for longer than a
    heartbeat's lifetime (its thread died, say) is not."""
    publish(store, Worker("w1", {"m": model({1: status("AVAILABLE")})}))
    view = RegistryView(store, refresh_interval_s=0.05)
    view.refresh()
    assert view.current
    time.sleep(HEARTBEAT_TTL_S + 0.1)
    assert not view.current
    view.refresh()
    assert view.current
