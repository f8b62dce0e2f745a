"""A worker's heartbeat (tasks.heartbeat) publishing to a real Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from inference.states import ModelReport, VersionReport, VersionState, VersionStatus
from tasks.broker import EmbeddedRedis
from tasks.heartbeat import HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S, Heartbeat
from tasks.routing import CATALOG_KEY, worker_key

SNAPSHOT = {
    "resnet": ModelReport(
        {
            2: VersionReport(VersionStatus(2, VersionState.AVAILABLE)),
            1: VersionReport(VersionStatus(1, VersionState.LOADING)),
        },
        error="",
        active=True,
        max_queue_size=100,
    )
}
PUBLISHED_RESNET = {  # as it is written (tasks.messages.ModelSnapshot)
    "queue": "ovms.CPU.resnet",
    "versions": {
        "2": {"state": "AVAILABLE", "error_code": "OK", "error_message": "OK"},
        "1": {"state": "LOADING", "error_code": "OK", "error_message": "OK"},
    },
    "error": "",
    "active": True,
    "max_queue_size": 100,
    "default_priority": 2,
}


def _document(client: redis.Redis) -> dict[str, Any]:
    return json.loads(client.get(worker_key("CPU-host-1-abc")))


def test_the_heartbeat_publishes_the_worker_and_its_models_and_withdraws_them_when_stopped(
    broker: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(broker.url)
    heartbeat = Heartbeat(client, "CPU-host-1-abc", "CPU", lambda: SNAPSHOT)
    heartbeat.start()
    try:
        document = _document(client)
        assert document["id"] == "CPU-host-1-abc" and document["device"] == "CPU"
        assert document["models"] == {"resnet": PUBLISHED_RESNET}
        assert (document["loaded"], document["draining"]) == (False, False)
        assert 0 < client.ttl(worker_key("CPU-host-1-abc")) <= HEARTBEAT_TTL_S
        assert json.loads(client.hget(CATALOG_KEY, "resnet")) == {"format": 1, "device": "CPU", "versions": [1, 2]}

        heartbeat.mark_loaded()
        assert _document(client)["loaded"] is True
        heartbeat.drain()
        assert _document(client)["draining"] is True

        first = _document(client)["time"]
        time.sleep(HEARTBEAT_INTERVAL_S * 1.5)
        assert _document(client)["time"] > first, "the heartbeat thread refreshes the document"
    finally:
        heartbeat.stop()
    assert client.get(worker_key("CPU-host-1-abc")) is None
    assert client.hexists(CATALOG_KEY, "resnet"), "the catalog remembers the model after its worker left"
