"""What a cluster is doing, read from its Redis at one moment: for `ovms status` (ovms.status).

Per model version: its state as the workers report it together (tasks.registry), the live workers holding
it AVAILABLE, the messages waiting in its queue (the broker), and its last minute cluster-wide (requests
per second, median latency, failures: tasks.statistics.read_recent). Per worker: device, host, state and
the predict messages it is running (its heartbeat). Everything comes from Redis, so it works from any
host that reaches it, with or without an api running.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import redis

from inference.states import VersionState
from tasks.queue_depth import queue_depths
from tasks.registry import RegistryView
from tasks.statistics import read_recent, recent_seconds


@dataclass(frozen=True)
class VersionRow:
    model: str
    version: int
    state: str
    workers: list[str]  # live workers serving it (holding it AVAILABLE, in memory or not, or loading it on demand)
    queue: str | None  # its model queue, while a live worker serves it
    queued: int | None  # messages waiting there (None: no queue)
    requests_per_s: float  # over the last minute, failed ones included
    p50_ms: float | None  # median latency of the successful requests of the last minute
    failed: int  # requests that failed in the last minute
    resident: bool = True  # False: no live worker holds it in memory (a request loads it: inference.residency)


@dataclass(frozen=True)
class WorkerRow:
    worker_id: str
    device: str
    host: str
    state: str  # loading, serving or draining
    in_flight: int  # predict messages it is running
    models: list[str]


@dataclass(frozen=True)
class ClusterStatus:
    time: float
    window_s: float  # what "the last minute" spans (tasks.statistics.recent_seconds)
    versions: list[VersionRow]
    workers: list[WorkerRow]

    def to_json(self) -> dict:
        return asdict(self)


def read_status(store: redis.Redis, broker: redis.Redis) -> ClusterStatus:
    """The status now; `store` is the result backend (registry and statistics), `broker` holds the queues.
    Raises redis.RedisError when either cannot be read."""
    now = time.time()
    registry = RegistryView(store)
    registry.refresh()
    snapshots = registry.snapshots()
    models = registry.all_models()
    keys = [(name, version) for name in sorted(models) for version in sorted(models[name])]
    holders = {
        key: sorted(
            snapshot.worker_id
            for snapshot in snapshots
            if not snapshot.draining
            and (model := snapshot.models.get(key[0])) is not None
            and (report := model.report.versions.get(key[1])) is not None
            and (report.status.state == VersionState.AVAILABLE or report.on_demand)
        )
        for key in keys
    }
    queues = sorted({view.queue for versions in models.values() for view in versions.values() if view.queue})
    depths = dict(zip(queues, queue_depths(broker, queues), strict=True))
    rows = []
    for (name, version), recent in zip(keys, read_recent(store, keys, now), strict=True):
        view = models[name][version]
        queued = depths.get(view.queue) if view.queue else None
        rows.append(
            VersionRow(
                name,
                version,
                view.state.value,
                holders[name, version],
                view.queue,
                queued,
                recent.per_second,
                recent.p50_ms,
                recent.failed,
                view.resident,
            )
        )
    workers = [
        WorkerRow(
            snapshot.worker_id,
            snapshot.device,
            snapshot.host,
            "draining" if snapshot.draining else ("serving" if snapshot.loaded else "loading"),
            snapshot.in_flight,
            sorted(snapshot.models),
        )
        for snapshot in sorted(snapshots, key=lambda snapshot: snapshot.worker_id)
    ]
    return ClusterStatus(now, recent_seconds(now), rows, workers)
