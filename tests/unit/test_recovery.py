"""Recovery after a worker loss runs on the registry's background thread, never on the request thread
whose look-up noticed the loss (tasks.registry, tasks.recovery); on a real Redis, with a worker that
publishes a real snapshot and then goes silent."""

from __future__ import annotations

import threading

import pytest
import redis

from inference.errors import NotFound
from inference.states import ModelReport, VersionReport, VersionState, VersionStatus
from tasks.broker import EmbeddedRedis
from tasks.heartbeat import Heartbeat
from tasks.registry import RegistryView
from tasks.routing import queue_for, worker_key

MODEL = ModelReport(
    {1: VersionReport(VersionStatus(1, VersionState.AVAILABLE))}, error="", active=True, max_queue_size=100
)
BACKGROUND = "ovms-registry"


class Recorded:
    """An on_workers_gone that notes the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, set[str], set[str]]] = []
        self.called = threading.Event()

    def __call__(self, lost: set[str], queues: set[str]) -> None:
        self.calls.append((current_thread(), lost, queues))
        self.called.set()


def current_thread() -> str:
    return threading.current_thread().name


def start_worker(client: redis.Redis, worker_id: str) -> None:
    Heartbeat(client, worker_id, "CPU", lambda: {"digits": MODEL}).publish()


def test_a_loss_seen_by_a_request_thread_is_recovered_on_the_background_thread(broker: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(broker.url)
    start_worker(client, "w1")
    recovery = Recorded()
    registry = RegistryView(client, refresh_interval_s=60, on_workers_gone=recovery)  # no background refresh
    registry.start()
    try:
        client.delete(worker_key("w1"))  # its heartbeat lapsed
        threading.Event().wait(0.2)  # the view is stale: a miss refreshes it on this thread
        with pytest.raises(NotFound):
            registry.resolve("unknown", None)
        assert registry.live_workers() == []  # this thread saw the loss...
        assert recovery.called.wait(5)  # ...and the background thread recovered from it
        assert recovery.calls == [(BACKGROUND, {"w1"}, set())]
    finally:
        registry.stop()


def test_a_loss_seen_by_the_background_refresh_is_recovered_there_once(broker: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(broker.url)
    start_worker(client, "w1")
    start_worker(client, "w2")
    recovery = Recorded()
    registry = RegistryView(client, refresh_interval_s=0.05, on_workers_gone=recovery)
    registry.start()
    try:
        client.delete(worker_key("w1"))
        assert recovery.called.wait(5)
        threading.Event().wait(0.3)  # later refreshes see nothing new go
        assert recovery.calls == [(BACKGROUND, {"w1"}, {queue_for("CPU", "digits")})]
    finally:
        registry.stop()


def test_the_job_sweep_hook_runs_after_background_refreshes_only(broker: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(broker.url)
    threads: list[str] = []
    registry = RegistryView(client, refresh_interval_s=0.05, on_refreshed=lambda: threads.append(current_thread()))
    registry.start()  # its first refresh runs here, on this thread
    try:
        registry.refresh()
        threading.Event().wait(0.3)
        assert threads and set(threads) == {BACKGROUND}
    finally:
        registry.stop()


def test_a_failing_recovery_does_not_stop_the_refreshes(broker: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(broker.url)
    start_worker(client, "w1")
    failures = threading.Event()

    def failing(lost: set[str], queues: set[str]) -> None:
        failures.set()
        raise RuntimeError("recovery failed")

    registry = RegistryView(client, refresh_interval_s=0.05, on_workers_gone=failing)
    registry.start()
    try:
        client.delete(worker_key("w1"))
        assert failures.wait(5)
        start_worker(client, "w2")
        threading.Event().wait(0.5)
        assert registry.live_workers() == ["w2"]
    finally:
        registry.stop()
