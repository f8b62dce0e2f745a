"""Worker bootstrap: a Celery worker for one device, its own parts added as bootsteps (tasks.worker_steps)."""

from __future__ import annotations

import logging
import os
import socket

from celery.signals import worker_shutting_down

from tasks.app import app, configure
from tasks.connections import redis_client
from tasks.routing import worker_name
from tasks.settings import WorkerSettings
from tasks.worker_steps import SERVING_STEPS, ServingOptions

log = logging.getLogger("serving")


class _Worker(app.Worker):  # type: ignore[name-defined]
    """Celery's worker, leaving the process title alone: with setproctitle installed Celery would retitle
    the process `[celeryd: …] -active- (…)`, hiding the name a supervisor gave it (ovms.titled) and the
    command line the container healthcheck reads (ovms.healthcheck)."""

    def set_process_status(self, info: str) -> None:
        pass


def run_worker(settings: WorkerSettings, broker_url: str) -> int:
    """Run a Celery worker for `settings.device` until it is told to stop; returns an exit code."""
    device = settings.device
    if not settings.models_for(device):
        log.error("No models are configured for device %s", device)
        return 1
    backend_url = settings.result_backend_url or broker_url
    configure(broker_url, backend_url, settings.job_ttl_s)
    app.steps["worker"].update(SERVING_STEPS)
    worker_id = worker_name(device, os.getpid())
    worker = _Worker(  # what `celery worker` builds from its command line, with our steps' option added
        hostname=f"{worker_id}@{socket.gethostname()}",
        pool_cls="threads",
        concurrency=settings.worker_concurrency,
        loglevel=settings.log_level,
        quiet=True,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        task_events=settings.task_events,
        serving=ServingOptions(settings, worker_id, redis_client(backend_url)),
    )
    asked_to_stop: list[str] = []  # Celery's shutdown kinds, from its signal handlers
    worker_shutting_down.connect(lambda how, **_: asked_to_stop.append(how), weak=False)
    worker.start()
    # Celery exits 1 after Ctrl-C; a warm shutdown that was asked for (SIGINT or SIGTERM) is a clean stop.
    return 0 if asked_to_stop[:1] == ["Warm"] else worker.exitcode or 0
