"""Worker bootstrap: load the models configured for one device, publish them, consume their queues."""

from __future__ import annotations

import logging
import os
import socket

import redis
from celery.signals import worker_ready

from inference.manager import ModelManager
from inference.settings import ServerSettings
from tasks import runtime
from tasks.app import app, configure
from tasks.registry import WorkerPublisher
from tasks.routing import queue_for

log = logging.getLogger("serving")


def run_worker(settings: ServerSettings, broker_url: str) -> int:
    """Run a Celery worker for `settings.device` until it is told to stop; returns an exit code."""
    device = settings.device
    models = settings.models_for(device)
    if not models:
        log.error("No models are configured for device %s", device)
        return 1
    backend_url = settings.result_backend_url or broker_url
    configure(broker_url, backend_url)
    store = redis.Redis.from_url(backend_url)
    worker_id = f"{device}-{socket.gethostname()}-{os.getpid()}"
    queues = {model.name: queue_for(device, model.name) for model in models}
    manager = ModelManager(models)
    publisher = WorkerPublisher(store, worker_id, device, queues, manager.snapshot)
    publisher.start()
    manager.reconcile()
    publisher.publish()
    runtime.install(runtime.WorkerRuntime(manager, store, worker_id))
    worker_ready.connect(lambda **_: log.info("Worker %s is ready", worker_id), weak=False)
    log.info("Worker %s serves %s on %s", worker_id, ", ".join(queues), device)
    try:
        app.worker_main(
            [
                "--quiet",
                "worker",
                "--pool=threads",
                f"--concurrency={settings.worker_concurrency}",
                f"--queues={','.join(queues.values())}",
                f"--hostname={worker_id}@%h",
                f"--loglevel={settings.log_level}",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        publisher.stop()
        manager.close()
    return 0
