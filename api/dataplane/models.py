"""The model repository as the live workers report it (tasks.registry): version statuses, metadata,
the configuration's models, and a reload of it on every worker."""

from __future__ import annotations

from collections.abc import Callable

import redis

from inference.errors import VERSION_NOT_FOUND, InvalidArgument, NotFound, ServingError
from inference.signature import ModelSignature
from inference.states import VersionStatus
from tasks.control import request_reload
from tasks.link import RedisLink
from tasks.registry import RegistryView


class ModelRepository:
    def __init__(
        self,
        registry: RegistryView,
        store: redis.Redis,
        link: RedisLink,
        configured: Callable[[], list[str] | None],
    ) -> None:
        """`store`: where workers take reload requests (tasks.control); `configured()`: the models of
        this server's configuration, None without one."""
        self._registry = registry
        self._store = store
        self._link = link
        self._configured = configured

    def expected_models(self) -> list[str]:
        """The models this server must serve to be ready: its configuration's when it has one, else the
        ones live workers are configured with."""
        configured = self._configured()
        return sorted(configured) if configured is not None else self._registry.served_model_names(active_only=True)

    def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        """Every version's status, or just the requested one (NOT_FOUND if it is unknown)."""
        with self._link.required():
            versions = self._registry.versions(name)
        if version:
            view = versions.get(version)
            if view is None:
                raise NotFound(VERSION_NOT_FOUND)
            return [view.status]
        return [view.status for _, view in sorted(versions.items())]

    def serves(self, name: str) -> bool:
        """Whether a live worker serves a version of the model: AVAILABLE, in memory or not (a request loads
        it), or loading on demand (requests wait for it)."""
        with self._link.required():
            return any(view.queue is not None for view in self._registry.versions(name).values())

    def model_metadata(self, name: str, version: int | None) -> tuple[int, ModelSignature]:
        """The version that serves (the default one for None) and its signature."""
        with self._link.required():
            target = self._registry.resolve(name, version)
        return target.version, target.signature

    def config_status(self) -> dict[str, list[VersionStatus]]:
        """Every known model's version statuses (GET /v1/config)."""
        with self._link.required():
            statuses = {}
            for name in sorted(set(self.expected_models()) | set(self._registry.served_model_names())):
                try:
                    statuses[name] = self.model_status(name, None)
                except ServingError:
                    statuses[name] = []
            return statuses

    def reload_config(self) -> bool:
        """Every live worker re-reads its configuration now; True if anything was (un/re)loaded."""
        with self._link.required():
            outcome = request_reload(self._store, self._registry.live_workers())
            if outcome.errors:
                raise InvalidArgument("Configuration not applied: " + "; ".join(sorted(set(outcome.errors))))
            self._registry.refresh()
            return outcome.changed
