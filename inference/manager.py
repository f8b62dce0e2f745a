"""The model versions one worker holds: which to load, their states, and lookup for inference.

Versions follow TensorFlow Serving's states: a version directory that appears is START until its files
are complete and unchanged across one poll, then LOADING (fetched, compiled, warmed up with one
inference) and AVAILABLE; one that disappears (or that the policy drops) goes UNLOADING, finishes
what is queued, and ends END. A version that failed to load is retried once its files change.

With a memory budget or a model's idle_unload_s (inference.residency), an AVAILABLE version may leave
memory and stay AVAILABLE, "not resident": a request for it (acquire) asks this worker's residency thread
to load it again (LOADING meanwhile) and waits for it within its deadline. Loads and unloads are
serialized (one load lock); a version is unloaded only once no request holds it (a Lease).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import openvino as ov

from inference.batcher import DynamicBatcher
from inference.errors import NotFound, ServingError, Unavailable, load_failed, one_line, plain_message
from inference.model import CompiledVersion
from inference.model_config import ConfigError, ModelConfig
from inference.repository import select_versions
from inference.residency import (
    EVICTION_WAIT_S,
    UNMEASURED_FACTOR,
    VersionUse,
    files_bytes,
    process_rss_bytes,
    victims_by_age,
)
from inference.signature import ModelSignature
from inference.states import (
    LOADING_ON_DEMAND,
    NOT_RESIDENT,
    ModelReport,
    Residency,
    VersionReport,
    VersionState,
    VersionStatus,
)
from inference.statistics import BUDGET, CONFIG, DEMAND, IDLE, RELOAD, STARTUP, InferenceStatistics, VersionKey
from inference.storage import ModelStorage, open_storage

log = logging.getLogger("serving")

START, LOADING, AVAILABLE, UNLOADING, END = (
    VersionState.START,
    VersionState.LOADING,
    VersionState.AVAILABLE,
    VersionState.UNLOADING,
    VersionState.END,
)
_HELD = (START, LOADING, AVAILABLE)
_LOAD_ERRORS = (RuntimeError, ServingError, ConfigError, OSError)
IDLE_CHECKS_PER_PERIOD = 4  # a version is unloaded at most a quarter of its idle_unload_s late
MAX_IDLE_CHECK_S = 1.0


@dataclass(frozen=True)
class HeldVersion:
    """A version this worker holds: its status, the batcher that serves it while resident, and its signature
    (kept while it is not resident: it is still servable, and the api routes requests to it)."""

    status: VersionStatus
    served: DynamicBatcher | None = None
    signature: ModelSignature | None = None

    @property
    def state(self) -> VersionState:
        return self.status.state

    @property
    def on_demand(self) -> bool:
        """Servable but not in memory: a request loads it (AVAILABLE), or a load runs (LOADING)."""
        return self.served is None and self.signature is not None and self.state in (AVAILABLE, LOADING)

    def report(self, residency: Residency | None = None) -> VersionReport:
        return VersionReport(self.status, self.signature, residency)


class Lease:
    """A version's batcher held for one message: the version is not unloaded until it is released."""

    def __init__(self, batcher: DynamicBatcher, release: Callable[[], None] | None = None) -> None:
        self.batcher = batcher
        self._release = release

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_: object) -> None:
        if self._release is not None:
            self._release()
            self._release = None


@dataclass
class _Model:
    config: ModelConfig
    storage: ModelStorage
    versions: dict[int, HeldVersion] = field(default_factory=dict)
    seen: dict[int, tuple] = field(default_factory=dict)  # fingerprints at the previous poll
    failed: dict[int, tuple] = field(default_factory=dict)  # fingerprints that failed to load
    error: str = ""  # the repository itself cannot be read
    empty: str = ""  # the repository can be read but offers no version to load: why
    active: bool = True  # False once removed from the configuration (its versions stay, END)


class ModelManager:
    """Loads the configured models' versions, keeps their states, and follows changes."""

    def __init__(
        self,
        models: list[ModelConfig],
        core: ov.Core | None = None,
        statistics: InferenceStatistics | None = None,
        memory_budget_bytes: int = 0,
        release_memory: Callable[[], None] | None = None,
        memory_in_use: Callable[[], int] = process_rss_bytes,
    ) -> None:
        """`statistics`: where the versions' batchers count their inferences, and the loads and unloads
        (inference.statistics); `memory_budget_bytes`: what the resident versions may take together (0: no
        budget); `release_memory`: called after a version left memory (the worker gives freed pages back);
        `memory_in_use`: the process's memory in bytes, read before and after a load to size the version."""
        self._core = core or ov.Core()
        self._statistics = statistics
        self._budget = memory_budget_bytes
        self._release_memory = release_memory or (lambda: None)
        self._memory_in_use = memory_in_use
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a version's state, or a lease of one being evicted
        self._wanted = threading.Condition(self._lock)  # work for the residency thread
        self._load_lock = threading.Lock()  # one load or unload at a time
        self._uses: dict[VersionKey, VersionUse] = {}  # versions on demand (a budget, or idle_unload_s)
        self._demanded: list[VersionKey] = []  # loads on demand asked for
        self._residency_thread: threading.Thread | None = None
        self._closing = False
        self._started = False  # the first reconcile loads what the worker starts with
        self._primed: set[str] = set()
        self.on_change: Callable[[], None] | None = None  # told when a version leaves or enters memory
        for config in models:
            self._models[config.name] = _Model(config, open_storage(config.base_path))

    def configs(self) -> dict[str, ModelConfig]:
        with self._lock:
            return {name: model.config for name, model in self._models.items() if model.active}

    def reconcile(self, initial: bool = False) -> bool:
        """Follow the repositories: load new versions, unload removed ones; True if any state changed.

        `initial`: trust complete versions at once instead of waiting one poll for them to settle.
        """
        changed = False
        with self._load_lock:
            for model in list(self._models.values()):
                if model.active:
                    changed |= self._reconcile_model(model, initial)
            self._started = True
        self._watch_idle()
        return changed

    def apply_config(self, models: list[ModelConfig]) -> bool:
        """Make the new configuration current: added models load, removed ones unload, changed ones
        reload (the new version is AVAILABLE before the old one goes); untouched ones are left alone.
        A change of idle_unload_s alone only takes effect (nothing is rebuilt)."""
        wanted = {config.name: config for config in models}
        changed = False
        with self._load_lock:
            for name in [n for n, model in self._models.items() if model.active and n not in wanted]:
                log.info("Model %s: removed from the configuration", name)
                self._retire_model(self._models[name])
                changed = True
            for name, config in wanted.items():
                current = self._models.get(name)
                if current is not None and current.active and current.config == config:
                    continue
                log.info("Model %s: configuration %s", name, "changed" if current else "added")
                if current is None or not current.active or current.config.base_path != config.base_path:
                    if current is not None:
                        self._retire_model(current)
                    current = self._models[name] = _Model(config, open_storage(config.base_path))
                    self._reconcile_model(current, initial=True)
                elif replace(current.config, idle_unload_s=config.idle_unload_s) == config:
                    current.config = config
                    self._track(current)
                else:
                    self._reload_model(current, config)
                changed = True
        self._watch_idle()
        return changed

    def get(self, name: str, version: int) -> DynamicBatcher | None:
        """The batcher that runs an AVAILABLE version in memory, or None."""
        model = self._models.get(name)
        held = model.versions.get(version) if model else None
        return held.served if held is not None and held.state == AVAILABLE else None

    def default(self, name: str) -> DynamicBatcher | None:
        """The highest AVAILABLE version's batcher, if it is in memory: where a request that named no version
        goes."""
        version = self._default_version(name)
        return self.get(name, version) if version is not None else None

    def acquire(self, name: str, version: int, or_default: bool, deadline: float) -> Lease | None:
        """The version's batcher, held until the lease is released; `or_default`: the default version's if
        this one is not servable. A version not in memory is loaded first: this waits for it until `deadline`
        (time.time()), then raises Unavailable (the load goes on). None if the version is not servable (it is
        retired); NotFound if its load failed."""
        with self._lock:
            while True:
                key = self._servable(name, version, or_default)
                if key is None:
                    return None
                held = self._models[key[0]].versions[key[1]]
                use = self._uses.get(key)
                if held.served is not None and not (use is not None and use.evicting):
                    return Lease(held.served, self._lease(key, use)) if use is not None else Lease(held.served)
                self._demand(key)
                remaining = deadline - time.time()
                if remaining <= 0:
                    raise Unavailable(
                        f"Model {key[0]} version {key[1]} is loading: not ready within the request's deadline; retry"
                    )
                self._changed.wait(remaining)

    def snapshot(self) -> dict[str, ModelReport]:
        """Every model's versions with state, error and signature, as published to the api."""
        with self._lock:
            return {
                name: ModelReport(
                    {v: held.report(self._residency(name, v, held)) for v, held in sorted(model.versions.items())},
                    model.error,
                    model.active,
                    model.config.max_queue_size,
                    model.empty,
                    model.config.default_priority,
                )
                for name, model in self._models.items()
            }

    def unserved(self) -> dict[str, str]:
        """Each configured model with no AVAILABLE version, and why: what an operator must fix."""
        with self._lock:
            return {
                name: _why_unserved(model)
                for name, model in self._models.items()
                if model.active and not any(held.state == AVAILABLE for held in model.versions.values())
            }

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wanted.notify_all()
            thread = self._residency_thread
        if thread is not None:
            thread.join(timeout=EVICTION_WAIT_S)
        for model in self._models.values():
            for held in model.versions.values():
                if held.served is not None:
                    held.served.close()

    def _set(
        self,
        model: _Model,
        version: int,
        state: VersionState,
        served: DynamicBatcher | None = None,
        error: str = "",
        kept: ModelSignature | None = None,
    ) -> None:
        """`error`: why a version ended without serving (reported with error code UNKNOWN); `kept`: the
        signature of a version that is not in memory but servable (AVAILABLE: loaded on demand; LOADING: now)."""
        if error:
            status = VersionStatus(version, state, "UNKNOWN", error)
        elif kept is not None:
            status = VersionStatus(version, state, "OK", NOT_RESIDENT if state == AVAILABLE else LOADING_ON_DEMAND)
        else:
            status = VersionStatus(version, state)
        signature = served.compiled.signature if served is not None else kept
        with self._lock:
            model.versions[version] = HeldVersion(status, served, signature)
            self._changed.notify_all()

    def _reconcile_model(self, model: _Model, initial: bool) -> bool:
        config = model.config
        try:
            listed = model.storage.list_versions()
            wanted = set(select_versions(listed, config.model_version_policy))
            empty = _why_empty(model.storage, listed, config) if not wanted else ""
        except ConfigError as exc:
            if model.error != str(exc):
                log.error("Model %s: %s", config.name, exc)
            model.error, model.empty = str(exc), ""
            return False
        if empty and empty != model.empty:
            log.warning("Model %s: %s", config.name, empty)
        model.error, model.empty = "", empty
        changed = False
        held = {v for v, held in model.versions.items() if held.state in _HELD}
        for version in sorted(wanted - {v for v in held if model.versions[v].state != START}):
            changed |= self._maybe_load(model, version, initial)
        # Availability first: what leaves goes only once something that stays serves (or nothing stays).
        successor_ready = any(model.versions[v].state == AVAILABLE for v in wanted if v in model.versions)
        if successor_ready or not wanted:
            for version in sorted(held - wanted):
                self._unload(model, version)
                changed = True
        return changed

    def _maybe_load(self, model: _Model, version: int, initial: bool) -> bool:
        """Load a version whose files are complete and settled; otherwise mark it START and wait."""
        try:
            fingerprint = model.storage.fingerprint(version)
        except ConfigError as exc:  # the repository went away between listing and looking
            log.error("Model %s version %d: %s", model.config.name, version, exc)
            return False
        settled = fingerprint is not None and (initial or model.seen.get(version) == fingerprint)
        model.seen[version] = fingerprint
        if fingerprint is not None and model.failed.get(version) == fingerprint:
            return False  # it stays END with its error until its files change
        if not settled:
            current = model.versions.get(version)
            if current is not None and current.state == START:
                return False
            self._set(model, version, START)
            return True
        self._set(model, version, LOADING)
        log.info("Loading model: %s, version: %d, from path: %s", model.config.name, version, model.storage.base_path)
        try:
            compiled = self._build(model, model.config, version, STARTUP if not self._started else RELOAD)
        except _LOAD_ERRORS as exc:
            message = _message(exc)
            log.error("Model %s version %d failed to load: %s", model.config.name, version, message)
            model.failed[version] = fingerprint
            self._set(model, version, END, error=message)
            return True
        model.failed.pop(version, None)
        self._serve(model, version, compiled)
        return True

    def _build(self, model: _Model, config: ModelConfig, version: int, reason: str) -> CompiledVersion:
        """Fetch, compile and warm up: one inference before AVAILABLE, so no client pays for first-run costs.
        Under a memory budget, room is made first (least recently used versions unloaded); a version on
        demand has its load time and size measured."""
        key = (config.name, version)
        began = time.perf_counter()
        directory = model.storage.fetch(version)
        fetch_s = time.perf_counter() - began
        if self._budget:
            self._make_room(self._estimate(key, directory), keep=key)
            self._prime(config, version, directory)
        began = time.perf_counter() - fetch_s  # a load's time: fetching and building, not making room
        memory_before = self._memory_in_use()
        compiled = CompiledVersion(self._core, config, version, directory)
        started = time.perf_counter()
        compiled.warm_up()
        log.info(
            "Model %s version %d: warm-up inference took %.1f ms",
            config.name,
            version,
            (time.perf_counter() - started) * 1000,
        )
        seconds = time.perf_counter() - began
        if self._on_demand_for(config):
            with self._lock:
                use = self._uses.setdefault(key, VersionUse())
                use.load_s, use.last_used = seconds, time.monotonic()
            if self._budget:
                self._count_size(key, use, self._memory_in_use() - memory_before, files_bytes(directory), seconds)
        if self._statistics is not None:
            self._statistics.loaded(config.name, version, reason, seconds)
        return compiled

    def _count_size(self, key: VersionKey, use: VersionUse, grown: int, files: int, seconds: float) -> None:
        """Take a load's measure of its version, and make room again if it took more than estimated."""
        measured = max(grown, files)
        with self._lock:
            use.size_bytes = max(use.size_bytes, measured)  # a load that reuses freed memory looks smaller
        log.info(
            "Model %s version %d: loaded in %.2f s, %.1f MiB (counted: %.1f MiB)",
            *key,
            seconds,
            measured / 2**20,
            use.size_bytes / 2**20,
        )
        if self._resident(key) is None:
            self._make_room(use.size_bytes, keep=key)

    def _serve(self, model: _Model, version: int, compiled: CompiledVersion) -> None:
        config = model.config
        batcher = DynamicBatcher(
            compiled,
            config.max_batch_size,
            config.max_queue_delay_ms / 1000,
            self._statistics,
            reserved=config.reserved_infer_requests,
        )
        previous = model.versions.get(version)
        self._set(model, version, AVAILABLE, batcher)
        if previous is not None and previous.served is not None:
            previous.served.close()  # a reload: the new one already serves, the old one drains
        log.info(
            "Loaded model %s; version: %d; state: AVAILABLE; nireq: %d; max batch: %d",
            config.name,
            version,
            compiled.nireq,
            batcher.max_rows,
        )

    def _unload(self, model: _Model, version: int) -> None:
        held = model.versions[version]
        self._set(model, version, UNLOADING)
        if held.served is not None:
            held.served.close()
        model.storage.release(version)
        model.seen.pop(version, None)
        self._set(model, version, END)
        with self._lock:
            self._uses.pop((model.config.name, version), None)
        if held.served is not None and self._statistics is not None:
            self._statistics.unloaded(model.config.name, version, CONFIG)
        log.info("Unloaded model %s version %d", model.config.name, version)

    def _reload_model(self, model: _Model, config: ModelConfig) -> None:
        """New settings for the same repository: each AVAILABLE version is rebuilt while the old build
        keeps serving, then swapped in; if the new settings do not load, the old build stays. A version not
        in memory is loaded now (its new signature is only known once built, and the apis check requests
        against the one it publishes), and may leave memory again as before."""
        model.config = config
        for version, held in sorted(model.versions.items()):
            if held.on_demand:
                with self._lock:
                    self._demand((config.name, version))
                continue
            if held.state != AVAILABLE or held.served is None:
                continue
            try:
                compiled = self._build(model, config, version, RELOAD)
            except _LOAD_ERRORS as exc:
                log.error("Model %s version %d keeps its old settings: %s", config.name, version, _message(exc))
                continue
            self._serve(model, version, compiled)
        self._reconcile_model(model, initial=True)

    # ----------------------------------------------------------------------------------- on demand

    def _on_demand_for(self, config: ModelConfig) -> bool:
        """Whether this model's versions may leave memory (and come back on demand)."""
        return bool(self._budget or config.idle_unload_s)

    def _track(self, model: _Model) -> None:
        """Versions in memory of a model that may now leave it: their use counts from now."""
        if self._on_demand_for(model.config):
            with self._lock:
                for version, held in model.versions.items():
                    if held.served is not None:
                        self._uses.setdefault((model.config.name, version), VersionUse(last_used=time.monotonic()))

    def _residency(self, name: str, version: int, held: HeldVersion) -> Residency | None:
        use = self._uses.get((name, version))
        if use is None or held.signature is None or held.state not in (AVAILABLE, LOADING):
            return None
        return Residency(held.served is not None, round(use.load_s, 3), use.loading_since)

    def _default_version(self, name: str) -> int | None:
        model = self._models.get(name)
        if model is None:
            return None
        available = [v for v, held in model.versions.items() if held.state == AVAILABLE or held.on_demand]
        return max(available) if available else None

    def _servable(self, name: str, version: int, or_default: bool) -> VersionKey | None:
        """The version a message runs on (in memory or not), or None; NotFound if its load on demand failed."""
        model = self._models.get(name)
        held = model.versions.get(version) if model is not None else None
        if held is not None and (held.state == AVAILABLE or held.on_demand):
            return name, version
        default = self._default_version(name) if or_default else None
        if default is not None:
            return name, default
        if held is not None and held.status.failed and (name, version) in self._uses:
            raise NotFound(load_failed(version, held.status.error_message))  # its load on demand failed
        return None

    def _lease(self, key: VersionKey, use: VersionUse) -> Callable[[], None]:
        use.leases += 1

        def release() -> None:
            with self._lock:
                use.leases -= 1
                use.last_used = time.monotonic()
                if use.evicting:
                    self._changed.notify_all()

        return release

    def _demand(self, key: VersionKey) -> None:
        """Ask the residency thread to load a version (holding the lock)."""
        if key not in self._demanded:
            self._demanded.append(key)
            self._wanted.notify_all()
        self._start_residency_thread()

    def _watch_idle(self) -> None:
        """Start the residency thread once a model has an idle_unload_s (it unloads idle versions)."""
        with self._lock:
            if any(model.active and model.config.idle_unload_s for model in self._models.values()):
                self._start_residency_thread()

    def _start_residency_thread(self) -> None:
        if self._residency_thread is None and not self._closing:
            self._residency_thread = threading.Thread(target=self._run_residency, name="ovms-residency", daemon=True)
            self._residency_thread.start()

    def _run_residency(self) -> None:
        """Load what requests ask for, one version at a time, and unload idle versions."""
        while True:
            with self._lock:
                self._wanted.wait_for(lambda: self._demanded or self._closing, self._idle_check_s())
                if self._closing:
                    return
                demanded, self._demanded = self._demanded, []
            try:
                for key in demanded:
                    self._load_on_demand(key)
                self._unload_idle()
            except Exception:  # whatever one load does, loading and unloading must go on for the others
                log.exception("Loading or unloading a model version failed")

    def _idle_check_s(self) -> float | None:
        periods = [m.config.idle_unload_s for m in self._models.values() if m.active and m.config.idle_unload_s]
        return min(MAX_IDLE_CHECK_S, min(periods) / IDLE_CHECKS_PER_PERIOD) if periods else None

    def _load_on_demand(self, key: VersionKey) -> None:
        name, version = key
        with self._load_lock:
            with self._lock:
                model = self._models.get(name)
                held = model.versions.get(version) if model is not None else None
                if model is None or not model.active or held is None or not held.on_demand:
                    return  # in memory already, or no longer servable
                use = self._uses.setdefault(key, VersionUse())
                use.loading_since = time.time()
                self._set(model, version, LOADING, kept=held.signature)
            self._tell_change()
            log.info("Loading model %s version %d on demand", name, version)
            try:
                compiled = self._build(model, model.config, version, DEMAND)
            except _LOAD_ERRORS as exc:
                message = _message(exc)
                log.error("Model %s version %d failed to load: %s", name, version, message)
                # Its files as they are now, not as at its last good load: files put back as they were then
                # are a change that loads it again (the repository watcher compares them with these).
                model.failed[version] = model.seen[version] = _fingerprint_or_none(model, version)
                self._set(model, version, END, error=message)
            else:
                self._serve(model, version, compiled)
            finally:
                with self._lock:
                    use.loading_since = 0.0
        self._tell_change()

    def _unload_idle(self) -> None:
        with self._load_lock:
            for key in self._idle():
                self._evict(key, IDLE)

    def _idle(self) -> list[VersionKey]:
        """Versions in memory that no request used for their model's idle_unload_s."""
        now = time.monotonic()
        with self._lock:
            return [
                key
                for key, use in self._uses.items()
                if (model := self._models.get(key[0])) is not None
                and model.config.idle_unload_s
                and self._resident(key)
                and use.idle_for(now) >= model.config.idle_unload_s
            ]

    def _resident(self, key: VersionKey) -> DynamicBatcher | None:
        model = self._models.get(key[0])
        held = model.versions.get(key[1]) if model is not None else None
        return held.served if held is not None and held.state == AVAILABLE else None

    def _estimate(self, key: VersionKey, directory: Path) -> int:
        with self._lock:
            use = self._uses.get(key)
            measured = use.size_bytes if use is not None else 0
        return measured or UNMEASURED_FACTOR * files_bytes(directory)

    def _prime(self, config: ModelConfig, version: int, directory: Path) -> None:
        """Compile the first version loaded on a device once before it is measured, so that its size is not
        taken for what the device's plugin holds from then on, whatever it runs."""
        if config.target_device in self._primed:
            return
        self._primed.add(config.target_device)
        started = time.perf_counter()
        CompiledVersion(self._core, config, version, directory).close()
        self._release_memory()
        log.info(
            "Device %s primed in %.2f s before measuring model sizes",
            config.target_device,
            time.perf_counter() - started,
        )

    def _make_room(self, needed: int, keep: VersionKey) -> None:
        """Unload versions, least recently used first, until `needed` more bytes fit in the budget (holding the
        load lock). What cannot be made room for (versions in use that do not finish, or a version larger
        than the budget alone) is loaded beyond the budget, and said so."""
        skipped: set[VersionKey] = set()
        while True:
            with self._lock:
                resident = {key for key in self._uses if self._resident(key) is not None}
                total = sum(self._uses[key].size_bytes for key in resident)
                if total + needed <= self._budget:
                    return
                victims = victims_by_age(self._uses, resident - {keep} - skipped)
            if not victims:
                log.warning(
                    "Model %s version %d (%.1f MiB) does not fit in --worker_memory_mb (%.1f MiB, %.1f MiB held by "
                    "versions that cannot be unloaded now): loading it beyond the budget",
                    keep[0],
                    keep[1],
                    needed / 2**20,
                    self._budget / 2**20,
                    total / 2**20,
                )
                return
            if not self._evict(victims[0], BUDGET):
                skipped.add(victims[0])

    def _evict(self, key: VersionKey, reason: str) -> bool:
        """Take a version out of memory once no request holds it (it stays servable: AVAILABLE, loaded again on
        demand); False if it could not be (in use for too long, or, when idle, used again meanwhile)."""
        batcher = self._take_out(key, reason)
        if batcher is None:
            return False
        name, version = key
        if self._statistics is not None:
            self._statistics.unloaded(name, version, reason)
        batcher.close()
        del batcher  # the last reference to its compiled model: freed now, before the memory is given back
        log.info(
            "Unloaded model %s version %d from memory (%s): the next request loads it",
            name,
            version,
            "idle" if reason == IDLE else "memory budget",
        )
        self._release_memory()
        self._tell_change()
        return True

    def _take_out(self, key: VersionKey, reason: str) -> DynamicBatcher | None:
        """Mark a version not resident once its requests ended; its batcher, for the caller to close."""
        name, version = key
        wait_s = EVICTION_WAIT_S if reason == BUDGET else 0.0
        with self._lock:
            model = self._models.get(name)
            held = model.versions.get(version) if model is not None else None
            use = self._uses.get(key)
            if model is None or held is None or held.served is None or use is None:
                return None
            if reason == IDLE and use.idle_for(time.monotonic()) < model.config.idle_unload_s:
                return None
            use.evicting = True
            drained = self._changed.wait_for(lambda: use.leases == 0, wait_s)
            use.evicting = False
            if not drained:
                self._changed.notify_all()  # requests that waited for it to come back may take it again
                log.warning("Model %s version %d stays in memory: requests held it for %.0f s", name, version, wait_s)
                return None
            self._set(model, version, AVAILABLE, kept=held.signature)
            return held.served

    def _tell_change(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _retire_model(self, model: _Model) -> None:
        model.active = False
        for version, held in sorted(model.versions.items()):
            if held.state in _HELD:
                self._unload(model, version)


def _fingerprint_or_none(model: _Model, version: int) -> tuple | None:
    """The version's files' fingerprint now; None while they are incomplete or unreadable."""
    try:
        return model.storage.fingerprint(version)
    except ConfigError:
        return None


def _why_unserved(model: _Model) -> str:
    if model.error or model.empty:
        return model.error or model.empty
    said = [
        f"version {v} failed to load: {held.status.error_message}"
        if held.status.failed
        else f"version {v} is {held.state}"
        for v, held in sorted(model.versions.items())
    ]
    return "; ".join(said) or "no version loaded"


def _why_empty(storage: ModelStorage, listed: list[int], config: ModelConfig) -> str:
    """Why a readable repository offers no version to load: it holds none, or the policy selects none."""
    if not listed:
        return storage.no_versions_reason()
    policy = json.dumps(config.model_version_policy)
    versions = ", ".join(map(str, listed))
    return f"{storage.base_path}: the version policy {policy} selects none of its versions {versions}"


def _message(exc: BaseException) -> str:
    """Why a version did not load, whole but on one line (the log, the version status, a predict's answer)."""
    message = getattr(exc, "message", None)
    return one_line(message) if message else plain_message(exc)
