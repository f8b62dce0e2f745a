"""The api's merged view of what the workers publish about themselves (see tasks.heartbeat).

The api process reads only this: it holds no model files and runs no OpenVINO.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis

from inference.errors import (
    MODEL_NOT_FOUND,
    NO_LIVE_WORKER,
    VERSION_NOT_FOUND,
    VERSION_NOT_LOADED,
    VERSION_RETIRED,
    NotFound,
    Unavailable,
)
from inference.model_config import DEFAULT_MAX_QUEUE_SIZE
from inference.signature import ModelSignature
from tasks.routing import CATALOG_KEY, WORKER_PREFIX

log = logging.getLogger("serving")

_STATE_RANK = {"AVAILABLE": 5, "LOADING": 4, "START": 3, "UNLOADING": 2, "END": 1, "UNKNOWN": 0}


@dataclass(frozen=True)
class VersionView:
    state: str
    error_code: str
    error_message: str
    signature: ModelSignature | None = None
    queue: str | None = None  # set when a live worker serves this version
    workers: int = 0  # live workers holding it AVAILABLE


@dataclass(frozen=True)
class Target:
    """Where a predict for a model version goes."""

    model: str
    version: int
    signature: ModelSignature
    queue: str
    workers: int = 1
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE


WorkersGone = Callable[[set[str], set[str]], None]


class RegistryView:
    """Api side: the merged state of every live worker, refreshed in the background.

    A draining worker (shutting down, finishing what it took) still heartbeats but serves nothing new.
    `on_workers_gone(lost, queues)` is called whenever workers stop serving: `lost` are the ones
    whose heartbeat lapsed (what they held is lost), `queues` the queues someone still consumes;
    `on_refreshed()` after each refresh of the background thread. Both are called on the background
    thread only (tasks.recovery): a refresh on a request thread (a look-up that missed) only notes
    what it saw go and wakes that thread.
    """

    def __init__(
        self,
        client: redis.Redis,
        refresh_interval_s: float = 0.5,
        on_workers_gone: WorkersGone | None = None,
        on_refreshed: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._interval = refresh_interval_s
        self._on_workers_gone = on_workers_gone
        self._on_refreshed = on_refreshed
        self._present: set[str] = set()
        # The catalog as last read: a Redis that restarted empty must not turn known models into
        # unknown ones (NOT_FOUND) until their workers register again; they are UNAVAILABLE meanwhile.
        self._catalog: dict[str, Any] = {}
        self._models: dict[str, dict[int, VersionView]] = {}
        self._errors: dict[str, str] = {}  # models whose repository a live worker cannot read
        self._workers: list[str] = []
        self._served: set[str] = set()
        self._queue_limits: dict[str, int] = {}
        self._queues: set[str] = set()
        self._active: set[str] = set()
        self._loaded_workers: set[str] = set()
        self._last_refresh = 0.0
        self._gone: set[str] | None = None  # lost workers not yet reported (empty: only stopped ones)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-registry", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> None:
        """Read every live worker's snapshot and the catalog, and rebuild the view; workers that stopped
        serving are reported by the background thread (see the class)."""
        started = time.monotonic()
        keys = list(self._client.scan_iter(match=f"{WORKER_PREFIX}*", count=1000))
        present = [json.loads(raw) for raw in self._client.mget(keys) if raw] if keys else []
        documents = [document for document in present if not document.get("draining")]
        stored = {name.decode(): json.loads(raw) for name, raw in self._client.hgetall(CATALOG_KEY).items()}
        catalog = {**self._catalog, **stored}
        models = _merge(documents, catalog)
        errors = {
            name: model["error"]
            for document in documents
            for name, model in document.get("models", {}).items()
            if model.get("error")
        }
        with self._lock:
            lost = self._present - {document["id"] for document in present}
            stopped = set(self._workers) - {document["id"] for document in documents}
            self._present = {document["id"] for document in present}
            self._catalog = catalog
            self._models = models
            self._errors = errors
            self._workers = [document["id"] for document in documents]
            self._served = {name for document in documents for name in document.get("models", {})}
            self._queue_limits = {
                name: model.get("max_queue_size", DEFAULT_MAX_QUEUE_SIZE)
                for document in documents
                for name, model in document.get("models", {}).items()
            }
            self._queues = {model["queue"] for document in documents for model in document.get("models", {}).values()}
            self._active = {
                name
                for document in documents
                for name, model in document.get("models", {}).items()
                if model.get("active", True)
            }
            self._loaded_workers = {document["id"] for document in documents if document.get("loaded")}
            self._last_refresh = started
        if stopped or lost:
            self._note_workers_gone(lost)

    @property
    def refreshed_at(self) -> float:
        """When (time.monotonic()) the last successful refresh began to read Redis."""
        return self._last_refresh

    def live_workers(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def queues(self) -> list[str]:
        """The model queues live workers consume."""
        with self._lock:
            return sorted(self._queues)

    def loaded_workers(self) -> set[str]:
        """Live workers that finished loading the models they found at start."""
        with self._lock:
            return set(self._loaded_workers)

    def versions(self, name: str) -> dict[int, VersionView]:
        versions = self._lookup(name)
        if versions is None:
            raise NotFound(MODEL_NOT_FOUND)
        if not versions and name in self._errors:
            raise Unavailable(f"Model {name}: {self._errors[name]}")
        return versions

    def resolve(self, name: str, version: int | None) -> Target:
        """The version to serve (None or 0 = the highest AVAILABLE one) and where to send it."""
        versions = self.versions(name)
        if not version:
            live = [v for v, view in versions.items() if view.state == "AVAILABLE"]
            if not live:
                if any(view.state in ("START", "LOADING") for view in versions.values()):
                    raise NotFound(VERSION_NOT_LOADED)
                raise Unavailable(NO_LIVE_WORKER)
            version = max(live)
        view = versions.get(version)
        if view is None:
            raise NotFound(VERSION_NOT_FOUND)
        if view.state in ("START", "LOADING"):
            raise NotFound(VERSION_NOT_LOADED)
        if view.state in ("UNLOADING", "END"):
            raise NotFound(VERSION_RETIRED)
        if view.state != "AVAILABLE" or view.signature is None or view.queue is None:
            raise Unavailable(NO_LIVE_WORKER)
        with self._lock:
            limit = self._queue_limits.get(name, DEFAULT_MAX_QUEUE_SIZE)
        return Target(name, version, view.signature, view.queue, view.workers, limit)

    def served_model_names(self, active_only: bool = False) -> list[str]:
        """Models live workers report (the catalog also remembers departed ones); `active_only`: only
        those still in a live worker's configuration, not the ones removed from it."""
        with self._lock:
            return sorted(self._active if active_only else self._served)

    def knows(self, name: str) -> bool:
        """Whether a worker ever reported this model (without a refresh: a cheap check per request)."""
        with self._lock:
            return name in self._models

    def _lookup(self, name: str) -> dict[int, VersionView] | None:
        with self._lock:
            versions = self._models.get(name)
            stale = time.monotonic() - self._last_refresh > 0.1
        if (versions is None or not any(v.state == "AVAILABLE" for v in versions.values())) and stale:
            self.refresh()  # a miss may be news the background refresh has not seen yet
            with self._lock:
                versions = self._models.get(name)
        return versions

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self._interval)  # early: a refresh elsewhere saw workers go
            self._wake.clear()
            if self._stop.is_set():
                return
            refreshed = not woken and self._refresh_logged()
            self._report_workers_gone()
            if refreshed and self._on_refreshed is not None:
                _call_safely(self._on_refreshed)

    def _refresh_logged(self) -> bool:
        try:
            self.refresh()
        except (redis.RedisError, ValueError) as exc:
            log.warning("Could not refresh the model registry: %s", exc)
            return False
        return True

    def _note_workers_gone(self, lost: set[str]) -> None:
        """Keep what went for the background thread to report, and wake it if this is another thread."""
        if self._on_workers_gone is None:
            return
        with self._lock:
            self._gone = (self._gone or set()) | lost
        if threading.current_thread() is not self._thread:
            self._wake.set()

    def _report_workers_gone(self) -> None:
        with self._lock:
            lost, self._gone = self._gone, None
            queues = set(self._queues)
        if lost is not None and self._on_workers_gone is not None:
            _call_safely(self._on_workers_gone, lost, queues)


def _call_safely(callback: Callable[..., None], *args: Any) -> None:
    """Run a recovery callback on the background thread: whatever it raises must not end the refreshes."""
    try:
        callback(*args)
    except Exception:
        log.exception("Recovery (%s) failed", getattr(callback, "__qualname__", callback))


def _merge(documents: list[dict[str, Any]], catalog: dict[str, Any]) -> dict[str, dict[int, VersionView]]:
    """Per model and version, the best state any live worker reports; catalog-only versions are UNKNOWN."""
    models: dict[str, dict[int, VersionView]] = {}
    for name, entry in catalog.items():
        models[name] = {
            int(v): VersionView("UNKNOWN", "UNAVAILABLE", NO_LIVE_WORKER) for v in entry.get("versions", [])
        }
    serving: dict[tuple[str, int], int] = {}  # live workers holding each version AVAILABLE
    for document in documents:
        for name, model in document.get("models", {}).items():
            versions = models.setdefault(name, {})
            for version_text, status in model["versions"].items():
                version = int(version_text)
                if status["state"] == "AVAILABLE":
                    serving[name, version] = serving.get((name, version), 0) + 1
                current = versions.get(version)
                if current is not None and _STATE_RANK[current.state] >= _STATE_RANK[status["state"]]:
                    continue
                signature = ModelSignature.from_dict(status["signature"]) if "signature" in status else None
                queue = model["queue"] if status["state"] == "AVAILABLE" else None
                versions[version] = VersionView(
                    status["state"], status["error_code"], status["error_message"], signature, queue
                )
    for (name, version), count in serving.items():
        models[name][version] = replace(models[name][version], workers=count)
    return models
