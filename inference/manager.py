"""The model versions one worker holds: which to load, their states, and lookup for inference.

Versions follow TensorFlow Serving's states: a version directory that appears is START until its files
are complete and unchanged across one poll, then LOADING (fetched, compiled, warmed up with one
inference) and AVAILABLE; one that disappears (or that the policy drops) goes UNLOADING, finishes
what is queued, and ends END. A version that failed to load is retried once its files change.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import openvino as ov

from inference.batcher import DynamicBatcher
from inference.errors import ServingError, one_line, plain_message
from inference.model import CompiledVersion
from inference.model_config import ConfigError, ModelConfig
from inference.repository import select_versions
from inference.states import ModelReport, VersionReport, VersionState, VersionStatus
from inference.statistics import InferenceStatistics
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


@dataclass(frozen=True)
class HeldVersion:
    """A version this worker holds: its status and, while AVAILABLE, the batcher that serves it."""

    status: VersionStatus
    served: DynamicBatcher | None = None

    @property
    def state(self) -> VersionState:
        return self.status.state

    def report(self) -> VersionReport:
        return VersionReport(self.status, self.served.compiled.signature if self.served is not None else None)


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
        self, models: list[ModelConfig], core: ov.Core | None = None, statistics: InferenceStatistics | None = None
    ) -> None:
        """`statistics`: where the versions' batchers count their inferences (inference.statistics)."""
        self._core = core or ov.Core()
        self._statistics = statistics
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()
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
        for model in list(self._models.values()):
            if model.active:
                changed |= self._reconcile_model(model, initial)
        return changed

    def apply_config(self, models: list[ModelConfig]) -> bool:
        """Make the new configuration current: added models load, removed ones unload, changed ones
        reload (the new version is AVAILABLE before the old one goes); untouched ones are left alone."""
        wanted = {config.name: config for config in models}
        changed = False
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
            else:
                self._reload_model(current, config)
            changed = True
        return changed

    def get(self, name: str, version: int) -> DynamicBatcher | None:
        """The batcher that runs an AVAILABLE version, or None."""
        model = self._models.get(name)
        held = model.versions.get(version) if model else None
        return held.served if held is not None and held.state == AVAILABLE else None

    def default(self, name: str) -> DynamicBatcher | None:
        """The highest AVAILABLE version's batcher: where a request that named no version goes."""
        model = self._models.get(name)
        if model is None:
            return None
        available = [v for v, held in model.versions.items() if held.state == AVAILABLE]
        return self.get(name, max(available)) if available else None

    def snapshot(self) -> dict[str, ModelReport]:
        """Every model's versions with state, error and signature, as published to the api."""
        with self._lock:
            return {
                name: ModelReport(
                    {v: held.report() for v, held in sorted(model.versions.items())},
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
        for model in self._models.values():
            for held in model.versions.values():
                if held.served is not None:
                    held.served.close()

    def _set(
        self, model: _Model, version: int, state: VersionState, served: DynamicBatcher | None = None, error: str = ""
    ) -> None:
        """`error`: why a version ended without serving (reported with error code UNKNOWN)."""
        status = VersionStatus(version, state, "UNKNOWN", error) if error else VersionStatus(version, state)
        with self._lock:
            model.versions[version] = HeldVersion(status, served)

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
            compiled = self._build(model, model.config, version)
        except _LOAD_ERRORS as exc:
            message = _message(exc)
            log.error("Model %s version %d failed to load: %s", model.config.name, version, message)
            model.failed[version] = fingerprint
            self._set(model, version, END, error=message)
            return True
        model.failed.pop(version, None)
        self._serve(model, version, compiled)
        return True

    def _build(self, model: _Model, config: ModelConfig, version: int) -> CompiledVersion:
        """Fetch, compile and warm up: one inference before AVAILABLE, so no client pays for first-run costs."""
        compiled = CompiledVersion(self._core, config, version, model.storage.fetch(version))
        started = time.perf_counter()
        compiled.warm_up()
        log.info(
            "Model %s version %d: warm-up inference took %.1f ms",
            config.name,
            version,
            (time.perf_counter() - started) * 1000,
        )
        return compiled

    def _serve(self, model: _Model, version: int, compiled: CompiledVersion) -> None:
        config = model.config
        batcher = DynamicBatcher(compiled, config.max_batch_size, config.max_queue_delay_ms / 1000, self._statistics)
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
        log.info("Unloaded model %s version %d", model.config.name, version)

    def _reload_model(self, model: _Model, config: ModelConfig) -> None:
        """New settings for the same repository: each AVAILABLE version is rebuilt while the old build
        keeps serving, then swapped in; if the new settings do not load, the old build stays."""
        model.config = config
        for version, held in sorted(model.versions.items()):
            if held.state != AVAILABLE:
                continue
            try:
                compiled = self._build(model, config, version)
            except _LOAD_ERRORS as exc:
                log.error("Model %s version %d keeps its old settings: %s", config.name, version, _message(exc))
                continue
            self._serve(model, version, compiled)
        self._reconcile_model(model, initial=True)

    def _retire_model(self, model: _Model) -> None:
        model.active = False
        for version, held in sorted(model.versions.items()):
            if held.state in _HELD:
                self._unload(model, version)


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
