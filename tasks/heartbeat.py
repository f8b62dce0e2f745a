"""A worker's heartbeat: what it publishes about itself for the apis (read back by tasks.registry).

Each worker keeps `ovms:worker:<id>` alive (a JSON snapshot with a short expiry, refreshed every
second) listing its device and, per model, the queue it consumes and every version's state and
signature. It also records each model in the persistent `ovms:catalog` hash, so that the api can
tell a model whose workers are all gone (UNAVAILABLE) from one that never existed (NOT_FOUND). The same
pipeline carries the worker's inference statistics to their cluster-wide totals (tasks.statistics).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import redis

from inference.states import ModelReport, VersionState
from inference.statistics import InferenceStatistics
from tasks.messages import CatalogEntry, ModelSnapshot, WorkerSnapshot
from tasks.routing import CATALOG_KEY, queue_for, worker_key
from tasks.statistics import flushing

log = logging.getLogger("serving")

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 3
# A heartbeat written later than this is late anyway: its client gives up on a Redis that stopped answering (a
# frozen master) by then, and the next one asks the Sentinels for the master again.
HEARTBEAT_TIMEOUT_S = 2.0


class Heartbeat:
    """A thread that publishes this worker's models and their states every HEARTBEAT_INTERVAL_S."""

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        device: str,
        snapshot: Callable[[], dict[str, ModelReport]],
        statistics: InferenceStatistics | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """`statistics`: the worker's counts, flushed with each publication; `in_flight`: how many predict
        messages it runs now."""
        self._client = client
        self._statistics = statistics or InferenceStatistics()
        self._key = worker_key(worker_id)
        self._worker_id = worker_id
        self._device = device
        self._snapshot = snapshot
        self._in_flight = in_flight or (lambda: 0)
        self._host = socket.gethostname()
        self.loaded = False  # set once the models present at start were loaded (or failed)
        self.draining = False  # set on shutdown: finishing what it took, taking nothing new
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._nudged = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-heartbeat", daemon=True)

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def mark_loaded(self) -> None:
        """The models present at start are loaded (or failed): say so now."""
        self.loaded = True
        self.publish()

    def drain(self) -> None:
        """Tell the apis now to send nothing more here (this worker finishes what it took)."""
        self.draining = True
        self._publish_or_warn()

    def nudge(self) -> None:
        """Publish soon, on the heartbeat's thread (a caller that must not wait for Redis)."""
        self._nudged.set()

    def publish(self) -> None:
        """Write this worker's snapshot now (also called at once when a model's state changes)."""
        reports = self._snapshot()
        models = {name: ModelSnapshot(queue_for(self._device, name), report) for name, report in reports.items()}
        snapshot = WorkerSnapshot(
            self._worker_id,
            self._device,
            models,
            self.loaded,
            self.draining,
            time.time(),
            self._host,
            self._in_flight(),
        )
        served = [
            (name, version)
            for name, report in reports.items()
            for version, held in report.versions.items()
            if held.status.state == VersionState.AVAILABLE
        ]
        with self._lock, self._client.pipeline(transaction=False) as pipe, flushing(pipe, self._statistics, served):
            pipe.set(self._key, snapshot.to_json(), ex=HEARTBEAT_TTL_S)
            for name, report in reports.items():
                pipe.hset(CATALOG_KEY, name, CatalogEntry(self._device, tuple(sorted(report.versions))).to_json())
            pipe.execute()

    def stop(self) -> None:
        """Stop publishing, flush the last statistics and withdraw the registration: the apis no longer count
        this worker."""
        self._stop.set()
        self._nudged.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        try:
            with self._lock, self._client.pipeline(transaction=False) as pipe, flushing(pipe, self._statistics, ()):
                pipe.delete(self._key)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("Could not withdraw worker registration: %s", exc)

    def _publish_or_warn(self) -> None:
        try:
            self.publish()
        except redis.RedisError as exc:
            log.warning("Heartbeat failed: %s", exc)

    def _run(self) -> None:
        while True:
            self._nudged.wait(HEARTBEAT_INTERVAL_S)
            self._nudged.clear()
            if self._stop.is_set():
                return
            self._publish_or_warn()
