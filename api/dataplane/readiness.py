"""Whether this api is ready: what REST's /v1/health/ready and the gRPC health service report."""

from __future__ import annotations

from api.admission import Admission
from api.dataplane.models import ModelRepository
from inference.errors import ServingError
from tasks.link import RedisLink
from tasks.registry import RegistryView


class Readiness:
    def __init__(self, models: ModelRepository, registry: RegistryView, admission: Admission, link: RedisLink) -> None:
        self._models = models
        self._registry = registry
        self._admission = admission
        self._link = link

    def check(self) -> tuple[bool, dict[str, bool]]:
        """Ready = not draining, Redis reachable, and every known model has an AVAILABLE version on a
        live worker (as read from Redis since it was last reachable again, and lately: see
        RegistryView.current) — in memory or not, or loading on demand: its requests are served —; with the
        per-model answers."""
        expected = self._models.expected_models()
        if not self._link.up or not self._registry.current or self._registry.refreshed_at < self._link.up_since:
            return False, dict.fromkeys(expected, False)
        models = {}
        for name in expected:
            try:
                models[name] = self._models.serves(name)
            except ServingError:
                models[name] = False
        return bool(models) and all(models.values()) and not self._admission.closed, models
