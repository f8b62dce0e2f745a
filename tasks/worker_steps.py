"""A worker's own parts as Celery bootsteps of its Worker blueprint (see celery.bootsteps).

They start after Celery's pool and before its consumer, one after the other:

    ModelManagement → Heartbeating → ModelLoading → PredictRuntime → QueueConsuming → JobFeeding
    → RepositoryWatching

A warm shutdown (SIGTERM) first closes them: the heartbeat says draining and the job feeders take no
more chunks. Celery then stops consuming, and the steps stop in reverse order: the watcher, the feeders
(each finishes the chunk it holds), the runtime (once the pool ran its last predict), the heartbeat
(the apis stop counting this worker) and the models. Each step reads the worker option `serving`
(ServingOptions) and keeps what it makes on the worker (`w.models`, `w.heartbeat`, …) for the next ones.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import bootsteps
from celery.signals import worker_ready
from celery.worker import WorkController

from inference.manager import ModelManager
from inference.statistics import InferenceStatistics
from tasks.heartbeat import Heartbeat
from tasks.job_feeder import JobFeeders
from tasks.memory import trim
from tasks.queue_consumers import QueueConsumers
from tasks.runtime import PredictActivity, WorkerRuntime
from tasks.settings import WorkerSettings
from tasks.watcher import RepositoryWatcher

log = logging.getLogger("serving")

CELERY_POOL = "celery.worker.components:Pool"


@dataclass(frozen=True)
class ServingOptions:
    """What the steps need, handed to them as the worker option `serving` (tasks.worker.run_worker)."""

    settings: WorkerSettings
    worker_id: str
    store: redis.Redis  # the result backend: tensors, job queues, control lists
    heartbeat_store: redis.Redis  # the same Redis, for the heartbeat alone (short timeouts: tasks.heartbeat)


class _ServingStep(bootsteps.StartStopStep):
    def __init__(self, w: WorkController, serving: ServingOptions, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.serving = serving


class ModelManagement(_ServingStep):
    """The models configured for this worker's device, and the statistics of their inferences. Closed
    last, once every predict and job chunk that used them ended."""

    requires = (CELERY_POOL,)

    def create(self, w: WorkController) -> None:
        settings = self.serving.settings
        w.statistics = InferenceStatistics()
        w.predicts = PredictActivity()  # counted by the runtime, published by the heartbeat
        w.models = ModelManager(
            settings.models_for(settings.device),
            statistics=w.statistics,
            memory_budget_bytes=settings.worker_memory_mb << 20,
            release_memory=trim,
        )

    def stop(self, w: WorkController) -> None:
        w.models.close()

    terminate = stop


class Heartbeating(_ServingStep):
    """Publishes the models' states from before they load (the apis see them LOADING) until the worker
    stopped, and flushes the inference statistics with them (the last ones once the predicts and job
    chunks ended); says draining as soon as the worker is told to stop."""

    requires = (ModelManagement,)

    def create(self, w: WorkController) -> None:
        serving = self.serving
        w.heartbeat = Heartbeat(
            serving.heartbeat_store,
            serving.worker_id,
            serving.settings.device,
            w.models.snapshot,
            w.statistics,
            lambda: w.predicts.count,
        )

    def start(self, w: WorkController) -> None:
        w.models.on_change = w.heartbeat.nudge  # a version left or entered memory: the apis see it at once
        w.heartbeat.start()

    def close(self, w: WorkController) -> None:
        w.heartbeat.drain()

    def stop(self, w: WorkController) -> None:
        w.heartbeat.stop()

    terminate = stop


class ModelLoading(_ServingStep):
    """Loads the models present at start, then says so in the heartbeat, and loudly in the log when none of
    them loaded: the worker stays up (a repository may be fixed while it runs) but serves nothing."""

    requires = (Heartbeating,)

    def start(self, w: WorkController) -> None:
        with _stop_signals_at_default():
            w.models.reconcile(initial=True)
        w.heartbeat.mark_loaded()
        unserved = w.models.unserved()
        if unserved and len(unserved) == len(w.models.configs()):
            log.error(
                "Worker %s loaded none of its %d model(s): it serves nothing, and the server is not ready, "
                "until one loads",
                self.serving.worker_id,
                len(unserved),
            )
            for name, reason in sorted(unserved.items()):
                log.error("Model %s is not served: %s", name, reason)


class PredictRuntime(_ServingStep):
    """The runtime predict tasks run on, reached through the app they are bound to (tasks.app.ServingApp)
    while this worker runs."""

    requires = (ModelLoading,)

    def create(self, w: WorkController) -> None:
        serving = self.serving
        budget = serving.settings.worker_max_inflight_bytes
        w.runtime = WorkerRuntime(w.models, serving.store, serving.worker_id, budget, w.statistics, w.predicts)

    def start(self, w: WorkController) -> None:
        w.app.worker_runtime = w.runtime

    def stop(self, w: WorkController) -> None:
        # Celery stops its pool after the steps started after it, as this one: let the predicts it runs
        # finish now, while the runtime, the models and the heartbeat are there (stopping it twice is
        # harmless). Otherwise the apis would take this worker for lost and run its messages again.
        w.pool.stop()
        w.app.worker_runtime = None

    def terminate(self, w: WorkController) -> None:
        w.app.worker_runtime = None


class QueueConsuming(_ServingStep):
    """Chooses the queues Celery consumes (one per configured model) and announces the worker; the
    watcher keeps them in step with config reloads."""

    requires = (PredictRuntime,)

    def create(self, w: WorkController) -> None:
        w.queue_consumers = QueueConsumers(w.app, self.serving.settings.device, w.hostname, w.models)
        w.setup_queues(w.queue_consumers.queues)

    def start(self, w: WorkController) -> None:
        queues = ", ".join(w.queue_consumers.queues)
        log.info("Worker %s serves %s on %s", self.serving.worker_id, queues, self.serving.settings.device)
        worker_ready.connect(self._announce_ready, sender=w.consumer, weak=False)

    def stop(self, w: WorkController) -> None:
        worker_ready.disconnect(self._announce_ready, sender=w.consumer)

    terminate = stop

    def _announce_ready(self, **_: Any) -> None:
        log.info("Worker %s is ready", self.serving.worker_id)


class JobFeeding(_ServingStep):
    """Runs async job chunks between predicts, one feeder per consumed queue (tasks.job_feeder)."""

    requires = (QueueConsuming,)

    def create(self, w: WorkController) -> None:
        w.job_feeders = JobFeeders(w.runtime, self.serving.store)

    def start(self, w: WorkController) -> None:
        w.job_feeders.sync(w.queue_consumers.queues)

    def close(self, w: WorkController) -> None:
        w.job_feeders.stop()

    def stop(self, w: WorkController) -> None:
        w.job_feeders.stop()
        w.job_feeders.join()

    terminate = stop


class RepositoryWatching(_ServingStep):
    """Follows config.json and the repositories, and answers reload requests (tasks.watcher)."""

    requires = (JobFeeding,)

    def create(self, w: WorkController) -> RepositoryWatcher:
        serving = self.serving
        return RepositoryWatcher(
            w.models, serving.settings, serving.store, serving.worker_id, on_change=functools.partial(_follow, w)
        )


def _follow(w: WorkController) -> None:
    """After the models changed: publish them, and consume (and feed jobs from) their queues."""
    w.heartbeat.publish()
    w.queue_consumers.sync()
    w.job_feeders.sync(w.queue_consumers.queues)


SERVING_STEPS = (
    ModelManagement,
    Heartbeating,
    ModelLoading,
    PredictRuntime,
    QueueConsuming,
    JobFeeding,
    RepositoryWatching,
)


@contextmanager
def _stop_signals_at_default() -> Iterator[None]:
    """Until its models are loaded a worker has nothing to drain: SIGTERM or SIGINT ends it at once, as
    before Celery took these signals (its warm shutdown would first finish loading every model). Signal
    handlers belong to the main thread; elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
