"""The api's merged view of what the workers publish about themselves (see tasks.heartbeat).

The api process reads only this: it holds no model files and runs no OpenVINO.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import redis

from inference.errors import (
    MODEL_NOT_FOUND,
    NO_LIVE_WORKER,
    VERSION_NOT_FOUND,
    VERSION_NOT_LOADED,
    VERSION_RETIRED,
    InvalidArgument,
    NotFound,
    Unavailable,
    load_failed,
)
from inference.model_config import DEFAULT_MAX_QUEUE_SIZE
from inference.priorities import DEFAULT_PRIORITY
from inference.signature import ModelSignature
from inference.states import PREPARING, RETIRING, VersionReport, VersionState, VersionStatus
from tasks.heartbeat import HEARTBEAT_TTL_S
from tasks.messages import CatalogEntry, WorkerSnapshot
from tasks.routing import CATALOG_KEY, WORKER_PREFIX

log = logging.getLogger("serving")
MAX_REFUSALS_LOGGED = 64  # distinct reasons for ignoring a snapshot, each logged once; then no more
RECENT_S = 0.1  # a view refreshed this recently is not refreshed again for a look-up that needs it current

Decoded = TypeVar("Decoded", WorkerSnapshot, CatalogEntry)

# Which state wins when workers report a version differently: the one closest to serving.
_STATE_RANK = {
    VersionState.AVAILABLE: 5,
    VersionState.LOADING: 4,
    VersionState.START: 3,
    VersionState.UNLOADING: 2,
    VersionState.END: 1,
    VersionState.UNKNOWN: 0,
}


# Where a version that no live worker holds in memory ranks (see inference.states.Residency): below one in
# memory, above one loading for the first time; loading on demand above waiting for a request to load it.
_ON_DEMAND_RANK = {VersionState.LOADING: 4.8, VersionState.AVAILABLE: 4.6}


@dataclass(frozen=True)
class MergedVersion:
    """A version as the live workers report it together: the best status any reports, where its requests
    go while one serves it, and — when none holds it in memory — how soon one can."""

    status: VersionStatus
    signature: ModelSignature | None = None
    queue: str | None = None  # set when a live worker serves this version (in memory or on demand)
    workers: int = 0  # live workers serving it
    resident: bool = True  # False: no live worker holds it in memory; a request loads it first
    may_leave: bool = False  # a worker serving it may take it out of memory (inference.residency)
    load_s: float = 0.0  # the shortest of its last load times the workers report (0: not known)
    loading_since: float = 0.0  # time.time() a load on demand began on `loading_on` (0: none runs)
    loading_on: str = ""

    @property
    def state(self) -> VersionState:
        return self.status.state

    def ready_at(self, now: float) -> float | None:
        """When (time.time()) it is expected in memory: None if it is, or if its load time is not known."""
        if self.resident or not self.load_s:
            return None
        return self.loading_since + self.load_s if self.loading_since else now + self.load_s


@dataclass(frozen=True)
class Target:
    """Where a predict for a model version goes."""

    model: str
    version: int
    signature: ModelSignature
    queue: str
    workers: int = 1
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    resident: bool = True  # False: no live worker holds it in memory (inference.states.Residency)
    ready_at: float | None = None  # when not resident: when it is expected in memory (None: not known)
    loading_on: str = ""  # a worker loading it now
    may_leave: bool = False  # a worker serving it may take it out of memory
    default_priority: int = DEFAULT_PRIORITY  # the level of a request that asks for none


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
        self._snapshots: list[WorkerSnapshot] = []
        # The catalog as last read: a Redis that restarted empty must not turn known models into
        # unknown ones (NOT_FOUND) until their workers register again; they are UNAVAILABLE meanwhile.
        self._catalog: dict[str, CatalogEntry] = {}
        self._models: dict[str, dict[int, MergedVersion]] = {}
        self._errors: dict[str, str] = {}  # models whose repository a live worker cannot read
        self._empty: dict[str, str] = {}  # models whose repository offers a live worker no version: why
        self._workers: list[str] = []
        self._served: set[str] = set()
        self._queue_limits: dict[str, tuple[int, int]] = {}  # model -> (max_queue_size, default_priority)
        self._queues: set[str] = set()
        self._active: set[str] = set()
        self._loaded_workers: set[str] = set()
        self._last_refresh = 0.0
        self._refused: set[str] = set()  # why snapshots were ignored, each logged once
        self._gone: set[str] | None = None  # lost workers not yet reported (empty: only stopped ones)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ovms-registry", daemon=True)

    def start(self) -> None:
        """Redis away now (an api process of a group restarted during an outage) is no reason to fail:
        the view stays empty, and the api answers UNAVAILABLE, until a refresh reaches it."""
        self._refresh_logged()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> None:
        """Read every live worker's snapshot and the catalog, and rebuild the view; workers that stopped
        serving are reported by the background thread (see the class)."""
        started = time.monotonic()
        keys = list(self._client.scan_iter(match=f"{WORKER_PREFIX}*", count=1000))
        raws = zip(keys, self._client.mget(keys) if keys else [], strict=True)
        present = list(self._decoded(WorkerSnapshot, raws).values())
        serving = [snapshot for snapshot in present if not snapshot.draining]
        stored = self._decoded(CatalogEntry, self._client.hgetall(CATALOG_KEY).items())
        catalog = {**self._catalog, **{name.decode(): entry for name, entry in stored.items()}}
        models = _merge(serving, catalog)
        served = [(name, model) for snapshot in serving for name, model in snapshot.models.items()]
        with self._lock:
            lost = self._present - {snapshot.worker_id for snapshot in present}
            stopped = set(self._workers) - {snapshot.worker_id for snapshot in serving}
            self._present = {snapshot.worker_id for snapshot in present}
            self._snapshots = present
            self._catalog = catalog
            self._models = models
            self._errors = {name: model.report.error for name, model in served if model.report.error}
            self._empty = {name: model.report.empty for name, model in served if model.report.empty}
            self._workers = [snapshot.worker_id for snapshot in serving]
            self._served = {name for name, _ in served}
            self._queue_limits = {
                name: (model.report.max_queue_size, model.report.default_priority) for name, model in served
            }
            self._queues = {model.queue for _, model in served}
            self._active = {name for name, model in served if model.report.active}
            self._loaded_workers = {snapshot.worker_id for snapshot in serving if snapshot.loaded}
            self._last_refresh = started
        if stopped or lost:
            self._note_workers_gone(lost)

    def _decoded(self, kind: type[Decoded], items: Iterable[tuple[bytes, bytes | None]]) -> dict[bytes, Decoded]:
        """The (key, value) pairs whose value decodes (others are skipped: a worker of a newer format, or
        foreign data), each kind of refusal logged once."""
        decoded = {}
        for name, raw in items:
            if raw is None:
                continue
            try:
                decoded[name] = kind.from_json(raw)
            except InvalidArgument as error:
                if error.message not in self._refused and len(self._refused) < MAX_REFUSALS_LOGGED:
                    self._refused.add(error.message)
                    log.warning("Ignoring a %s in Redis: %s", kind.WHAT, error.message)
        return decoded

    @property
    def refreshed_at(self) -> float:
        """When (time.monotonic()) the last successful refresh began to read Redis."""
        return self._last_refresh

    @property
    def current(self) -> bool:
        """Whether the view is recent enough to speak for the workers: refreshed within a heartbeat's
        lifetime (plus a refresh interval), so a view that stopped refreshing never vouches for workers
        that may be gone."""
        return time.monotonic() - self._last_refresh <= HEARTBEAT_TTL_S + self._interval

    def snapshots(self) -> list[WorkerSnapshot]:
        """Every live worker's snapshot as last read, draining ones included (for `ovms status`)."""
        with self._lock:
            return list(self._snapshots)

    def all_models(self) -> dict[str, dict[int, MergedVersion]]:
        """Every model's versions as the serving workers report them together, and the catalog's."""
        with self._lock:
            return dict(self._models)

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

    def versions(self, name: str) -> dict[int, MergedVersion]:
        versions = self._lookup(name)
        if versions is None:
            raise NotFound(MODEL_NOT_FOUND)
        if not versions and name in self._errors:
            raise Unavailable(f"Model {name}: {self._errors[name]}")
        if not versions and name in self._empty:
            raise NotFound(f"{VERSION_NOT_FOUND}: {self._empty[name]}")
        return versions

    def resolve(self, name: str, version: int | None) -> Target:
        """The version to serve (None or 0 = the highest AVAILABLE one) and where to send it. A version that
        failed to load is NOT_FOUND with its reason, as OVMS and TF Serving answer one that is not loaded:
        retrying cannot help until its files change (UNAVAILABLE would invite retries)."""
        versions = self.versions(name)
        if not version:
            live = [v for v, view in versions.items() if view.queue is not None]
            if not live:
                if any(view.state in PREPARING for view in versions.values()):
                    raise NotFound(VERSION_NOT_LOADED)
                failed = [v for v, view in versions.items() if view.status.failed]
                if failed:
                    raise NotFound(load_failed(max(failed), versions[max(failed)].status.error_message))
                raise Unavailable(NO_LIVE_WORKER)
            version = max(live)
        view = versions.get(version)
        if view is None:
            raise NotFound(VERSION_NOT_FOUND)
        if view.queue is not None and view.signature is not None:
            with self._lock:
                limit, default_priority = self._queue_limits.get(name, (DEFAULT_MAX_QUEUE_SIZE, DEFAULT_PRIORITY))
            ready_at = view.ready_at(time.time())
            return Target(
                name,
                version,
                view.signature,
                view.queue,
                view.workers,
                limit,
                view.resident,
                ready_at,
                view.loading_on,
                view.may_leave,
                default_priority,
            )
        if view.state in PREPARING:
            raise NotFound(VERSION_NOT_LOADED)
        if view.status.failed:
            raise NotFound(load_failed(version, view.status.error_message))
        if view.state in RETIRING:
            raise NotFound(VERSION_RETIRED)
        raise Unavailable(NO_LIVE_WORKER)

    def served_model_names(self, active_only: bool = False) -> list[str]:
        """Models live workers report (the catalog also remembers departed ones); `active_only`: only
        those still in a live worker's configuration, not the ones removed from it."""
        with self._lock:
            return sorted(self._active if active_only else self._served)

    def serves(self, name: str) -> bool:
        """Whether the current view has an AVAILABLE version of the model (without a refresh: resolve() then
        answers from memory, with no Redis call)."""
        with self._lock:
            return _any_available(self._models.get(name))

    def knows(self, name: str) -> bool:
        """Whether a worker ever reported this model (without a refresh: a cheap check per request)."""
        with self._lock:
            return name in self._models

    def version_now(self, name: str, version: int) -> MergedVersion | None:
        """A version as the workers report it now: the view is refreshed first unless it is recent (for an
        answer that depends on it, e.g. whether a request waited for a version that is loading)."""
        if time.monotonic() - self._last_refresh > RECENT_S:
            self.refresh()
        with self._lock:
            return self._models.get(name, {}).get(version)

    def _lookup(self, name: str) -> dict[int, MergedVersion] | None:
        with self._lock:
            versions = self._models.get(name)
            stale = time.monotonic() - self._last_refresh > RECENT_S
        if not _any_available(versions) and stale:
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
        except Exception as exc:  # whatever Redis holds, this thread must go on refreshing
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


def _any_available(versions: dict[int, MergedVersion] | None) -> bool:
    """Whether a live worker serves a version (in memory, or loading it on demand)."""
    return versions is not None and any(v.queue is not None for v in versions.values())


def _call_safely(callback: Callable[..., None], *args: Any) -> None:
    """Run a recovery callback on the background thread: whatever it raises must not end the refreshes."""
    try:
        callback(*args)
    except Exception:
        log.exception("Recovery (%s) failed", getattr(callback, "__qualname__", callback))


def _merge(snapshots: list[WorkerSnapshot], catalog: dict[str, CatalogEntry]) -> dict[str, dict[int, MergedVersion]]:
    """Per model and version, the best state any live worker reports; catalog-only versions are UNKNOWN."""
    models: dict[str, dict[int, MergedVersion]] = {
        name: {v: MergedVersion(_unserved(v)) for v in entry.versions} for name, entry in catalog.items()
    }
    serving: dict[tuple[str, int], list[tuple[str, VersionReport]]] = {}  # the live workers serving each version
    for snapshot in snapshots:
        for name, model in snapshot.models.items():
            versions = models.setdefault(name, {})
            for version, report in model.report.versions.items():
                servable = _servable(report)
                if servable:
                    serving.setdefault((name, version), []).append((snapshot.worker_id, report))
                current = versions.get(version)
                if current is not None and _rank(current) >= _rank(report):
                    continue
                queue = model.queue if servable else None
                versions[version] = MergedVersion(report.status, report.signature, queue, resident=not report.on_demand)
    for (name, version), reports in serving.items():
        models[name][version] = replace(models[name][version], workers=len(reports), **_residency(reports))
    return models


def _servable(report: VersionReport) -> bool:
    return report.status.state == VersionState.AVAILABLE or (report.on_demand and report.signature is not None)


def _rank(version: VersionReport | MergedVersion) -> float:
    on_demand = version.on_demand if isinstance(version, VersionReport) else not version.resident
    state = version.status.state
    return _ON_DEMAND_RANK.get(state, _STATE_RANK[state]) if on_demand else _STATE_RANK[state]


def _residency(reports: list[tuple[str, VersionReport]]) -> dict[str, Any]:
    """MergedVersion's residency fields from the reports of the workers serving a version."""
    may_leave = any(report.residency is not None for _, report in reports)
    if not all(report.on_demand for _, report in reports):
        return {"may_leave": may_leave}
    load_times = [report.residency.load_s for _, report in reports if report.residency and report.residency.load_s]
    loading = [
        (report.residency.loading_since + report.residency.load_s, worker, report.residency.loading_since)
        for worker, report in reports
        if report.residency and report.residency.loading_since
    ]
    _, loading_on, loading_since = min(loading) if loading else (0.0, "", 0.0)
    return {
        "resident": False,
        "may_leave": True,
        "load_s": min(load_times, default=0.0),
        "loading_since": loading_since,
        "loading_on": loading_on,
    }


def _unserved(version: int) -> VersionStatus:
    """A version the catalog remembers and no live worker reports."""
    return VersionStatus(version, VersionState.UNKNOWN, "UNAVAILABLE", NO_LIVE_WORKER)
