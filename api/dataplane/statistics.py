"""Statistics: per model version, what every worker counted (tasks.statistics), as the document of Triton's
statistics extension — `GET /v2/models[/{m}[/versions/{v}]]/stats` answers it as JSON, and its field names
are those of Triton's ModelStatisticsResponse, so a gRPC frontend fills its answer with ParseDict. Also the
cluster's status at a glance (tasks.status), which `GET /v1/status` answers for `ovms status`."""

from __future__ import annotations

from typing import Any

import redis

from inference.errors import VERSION_NOT_FOUND, NotFound, ServingError
from inference.states import VersionState
from inference.statistics import VersionCounts, VersionKey
from tasks.link import RedisLink
from tasks.registry import MergedVersion, RegistryView
from tasks.statistics import read_totals
from tasks.status import read_status


class StatisticsService:
    def __init__(
        self, registry: RegistryView, store: redis.Redis, link: RedisLink, broker: redis.Redis | None = None
    ) -> None:
        """`store`: the result backend, where the workers keep the totals; `broker`: where the model queues
        are (the store if not given)."""
        self._registry = registry
        self._store = store
        self._broker = broker or store
        self._link = link

    def cluster_status(self) -> dict[str, Any]:
        """Models, workers, queues and the last minute, read from Redis now (tasks.status)."""
        with self._link.required():
            return read_status(self._store, self._broker).to_json()

    def model_statistics(self, name: str | None, version: int | None) -> dict[str, Any]:
        """Every model's statistics (`name` None), or one model's: every version that serves (`version`
        None), as Triton lists its ready ones, or the one named, in any state the workers report it in.
        NOT_FOUND for a model or version no worker knows."""
        with self._link.required():
            versions = self._versions(name, version)
            totals = read_totals(self._store, versions)
        return {"model_stats": [_model_stat(*key, counts) for key, counts in zip(versions, totals, strict=True)]}

    def _versions(self, name: str | None, version: int | None) -> list[VersionKey]:
        if name is None:
            return [(model, v) for model in self._registry.served_model_names() for v in self._serving(model)]
        versions = self._registry.versions(name)
        if version is not None:
            if version not in versions:
                raise NotFound(VERSION_NOT_FOUND)
            return [(name, version)]
        serving = _serving(versions)
        if not serving:
            self._registry.resolve(name, None)  # why none serves: not loaded yet, or no live worker
        return [(name, v) for v in serving]

    def _serving(self, model: str) -> list[int]:
        try:
            return _serving(self._registry.versions(model))
        except ServingError:  # its repository cannot be read
            return []


def _serving(versions: dict[int, MergedVersion]) -> list[int]:
    return sorted(v for v, view in versions.items() if view.state == VersionState.AVAILABLE)


def _model_stat(name: str, version: int, counts: VersionCounts) -> dict[str, Any]:
    """One model version's statistics, as Triton's $model_stat. Queue and compute durations are those of
    the successful requests, so their count is the success count (as Triton's without a response cache)."""
    served = counts.success_count
    return {
        "name": name,
        "version": str(version),
        "last_inference": counts.last_inference_ms,
        "inference_count": counts.inference_count,
        "execution_count": counts.execution_count,
        "inference_stats": {
            "success": _duration(served, counts.success_ns),
            "fail": _duration(counts.fail_count, counts.fail_ns),
            "queue": _duration(served, counts.queue_ns),
            "compute_input": _duration(served, counts.compute_input_ns),
            "compute_infer": _duration(served, counts.compute_infer_ns),
            "compute_output": _duration(served, counts.compute_output_ns),
            "cache_hit": _duration(0, 0),  # no response cache
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(batch.count, batch.compute_input_ns),
                "compute_infer": _duration(batch.count, batch.compute_infer_ns),
                "compute_output": _duration(batch.count, batch.compute_output_ns),
            }
            for size, batch in sorted(counts.batches.items())
        ],
    }


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}
