"""The model versions one worker holds: which to load, their states, and lookup for inference."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openvino as ov

from inference.batcher import DynamicBatcher
from inference.errors import ServingError
from inference.model import CompiledVersion
from inference.repository import list_versions, select_versions
from inference.settings import ConfigError, ModelConfig

log = logging.getLogger("serving")

# TensorFlow Serving's ModelVersionStatus states.
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionStatus:
    state: str
    error_code: str = "OK"
    error_message: str = "OK"
    served: DynamicBatcher | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"state": self.state, "error_code": self.error_code, "error_message": self.error_message}
        if self.served is not None:
            data["signature"] = self.served.compiled.signature.to_dict()
        return data


class ModelManager:
    """Loads the configured models' versions and keeps their states."""

    def __init__(self, models: list[ModelConfig], core: ov.Core | None = None) -> None:
        self._core = core or ov.Core()
        self._configs = {model.name: model for model in models}
        self._versions: dict[str, dict[int, VersionStatus]] = {model.name: {} for model in models}
        self._lock = threading.Lock()

    @property
    def configs(self) -> dict[str, ModelConfig]:
        return dict(self._configs)

    def reconcile(self) -> bool:
        """Load versions the policy selects and unload the ones it no longer does; True if anything changed."""
        changed = False
        for config in self._configs.values():
            changed |= self._reconcile_model(config)
        return changed

    def get(self, name: str, version: int) -> DynamicBatcher | None:
        """The batcher that runs an AVAILABLE version, or None."""
        status = self._versions.get(name, {}).get(version)
        return status.served if status is not None and status.state == AVAILABLE else None

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every model's versions with state, error and signature, as published to the api."""
        with self._lock:
            return {
                name: {str(version): status.to_dict() for version, status in sorted(versions.items())}
                for name, versions in self._versions.items()
            }

    def close(self) -> None:
        for versions in self._versions.values():
            for status in versions.values():
                if status.served is not None:
                    status.served.close()

    def _reconcile_model(self, config: ModelConfig) -> bool:
        try:
            wanted = set(select_versions(list_versions(config.base_path), config.model_version_policy))
        except ConfigError as exc:
            log.error("Model %s: %s", config.name, exc)
            return False
        versions = self._versions[config.name]
        held = {v for v, status in versions.items() if status.state in (START, LOADING, AVAILABLE)}
        for version in sorted(wanted - held):
            self._load(config, version)
        for version in sorted(held - wanted):
            self._unload(config.name, version)
        return wanted != held

    def _set(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._versions[name][version] = status

    def _load(self, config: ModelConfig, version: int) -> None:
        self._set(config.name, version, VersionStatus(LOADING))
        log.info("Loading model: %s, version: %d, from path: %s", config.name, version, config.base_path)
        try:
            compiled = CompiledVersion(self._core, config, version, Path(config.base_path) / str(version))
        except (RuntimeError, ServingError, ConfigError) as exc:
            message = getattr(exc, "message", None) or str(exc).splitlines()[0]
            log.error("Model %s version %d failed to load: %s", config.name, version, message)
            self._set(config.name, version, VersionStatus(END, "UNKNOWN", message))
            return
        batcher = DynamicBatcher(compiled, config.max_batch_size, config.max_queue_delay_ms / 1000)
        self._set(config.name, version, VersionStatus(AVAILABLE, served=batcher))
        log.info(
            "Loaded model %s; version: %d; state: AVAILABLE; nireq: %d; max batch: %d",
            config.name,
            version,
            compiled.nireq,
            batcher.max_rows,
        )

    def _unload(self, name: str, version: int) -> None:
        status = self._versions[name][version]
        self._set(name, version, VersionStatus(UNLOADING))
        if status.served is not None:
            status.served.close()
        self._set(name, version, VersionStatus(END))
        log.info("Unloaded model %s version %d", name, version)
