"""Worker bootstrap: load the models configured for one device, publish them, consume their queues."""

from __future__ import annotations

import logging
import os
import socket

import redis
from celery.signals import worker_ready, worker_shutting_down

from inference.manager import ModelManager
from tasks import runtime
from tasks.app import app, configure
from tasks.job_feeder import JobFeeders
from tasks.registry import WorkerPublisher
from tasks.routing import queue_for, worker_name
from tasks.settings import WorkerSettings
from tasks.watcher import RepositoryWatcher

log = logging.getLogger("serving")


def run_worker(settings: WorkerSettings, broker_url: str) -> int:
    """Run a Celery worker for `settings.device` until it is told to stop; returns an exit code."""
    device = settings.device
    models = settings.models_for(device)
    if not models:
        log.error("No models are configured for device %s", device)
        return 1
    backend_url = settings.result_backend_url or broker_url
    configure(broker_url, backend_url, settings.job_ttl_s)
    store = redis.Redis.from_url(backend_url)
    worker_id = worker_name(device, os.getpid())
    manager = ModelManager(models)
    publisher = WorkerPublisher(store, worker_id, device, manager.snapshot)
    publisher.start()
    manager.reconcile(initial=True)
    publisher.loaded = True
    publisher.publish()
    consumers = QueueConsumers(device, f"{worker_id}@{socket.gethostname()}", manager)
    worker_runtime = runtime.WorkerRuntime(manager, store, worker_id, settings.worker_max_inflight_bytes)
    runtime.install(worker_runtime)
    feeders = JobFeeders(worker_runtime, store)
    feeders.sync(consumers.queues)
    watcher = RepositoryWatcher(
        manager,
        settings,
        store,
        worker_id,
        on_change=lambda: (publisher.publish(), consumers.sync(), feeders.sync(consumers.queues)),
    )
    worker_ready.connect(lambda **_: log.info("Worker %s is ready", worker_id), weak=False)
    worker_shutting_down.connect(lambda **_: _drain(publisher, feeders), weak=False)
    log.info("Worker %s serves %s on %s", worker_id, ", ".join(consumers.queues), device)
    watcher.start()
    try:
        app.worker_main(
            [
                "--quiet",
                "worker",
                "--pool=threads",
                f"--concurrency={settings.worker_concurrency}",
                f"--queues={','.join(consumers.queues)}",
                f"--hostname={worker_id}@%h",
                f"--loglevel={settings.log_level}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                *(["--task-events"] if settings.task_events else []),
            ]
        )
    finally:
        feeders.stop()
        feeders.join()
        watcher.stop()
        publisher.stop()
        manager.close()
    return 0


def _drain(publisher: WorkerPublisher, feeders: JobFeeders) -> None:
    """On SIGTERM (called inside the signal handler, so only flags): the next heartbeat tells the apis
    to send nothing more here, while Celery stops consuming and lets the running messages finish, and
    the job feeders finish the chunk they hold and take no more."""
    publisher.draining = True
    feeders.stop()


class QueueConsumers:
    """The queues this worker consumes: one per model configured for its device, kept in step with
    config reloads through Celery's own remote control (add_consumer / cancel_consumer)."""

    def __init__(self, device: str, hostname: str, manager: ModelManager) -> None:
        self._device = device
        self._hostname = hostname
        self._manager = manager
        self.queues = self._wanted()

    def _wanted(self) -> list[str]:
        return [queue_for(self._device, name) for name in self._manager.configs()]

    def sync(self) -> None:
        wanted = self._wanted()
        for queue in sorted(set(wanted) - set(self.queues)):
            app.control.add_consumer(queue, destination=[self._hostname])
            log.info("Worker %s now consumes %s", self._hostname, queue)
        for queue in sorted(set(self.queues) - set(wanted)):
            app.control.cancel_consumer(queue, destination=[self._hostname])
            log.info("Worker %s no longer consumes %s", self._hostname, queue)
        self.queues = wanted
