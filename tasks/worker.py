"""Worker bootstrap: a Celery worker for one device, its own parts added as bootsteps (tasks.worker_steps)."""

from __future__ import annotations

import logging
import os
import socket
import warnings

from celery.exceptions import SecurityWarning
from celery.signals import worker_shutting_down

from tasks.app import app, configure
from tasks.connections import redis_client
from tasks.heartbeat import HEARTBEAT_TIMEOUT_S
from tasks.routing import worker_name
from tasks.settings import WorkerSettings
from tasks.worker_steps import SERVING_STEPS, ServingOptions

log = logging.getLogger("serving")

# What Celery counts as a serializer that runs code when it loads a message (celery.platforms).
CODE_RUNNING_CONTENT = frozenset({"pickle", "application/x-python-serialize", "application/group-python-serialize"})


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
    _without_root_warning()
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
        serving=ServingOptions(
            settings,
            worker_id,
            redis_client(backend_url),
            redis_client(backend_url, socket_timeout=HEARTBEAT_TIMEOUT_S, socket_connect_timeout=HEARTBEAT_TIMEOUT_S),
        ),
    )
    asked_to_stop: list[str] = []  # Celery's shutdown kinds, from its signal handlers
    worker_shutting_down.connect(lambda how, **_: asked_to_stop.append(how), weak=False)
    worker.start()
    # Celery exits 1 after Ctrl-C; a warm shutdown that was asked for (SIGINT or SIGTERM) is a clean stop.
    return 0 if asked_to_stop[:1] == ["Warm"] else worker.exitcode or 0


def _without_root_warning() -> None:
    """Celery warns in 7 lines (a SecurityWarning) each time a worker starts as root, as in most
    containers. The danger it means is unpickling messages as root, which it refuses by itself (a
    SecurityError unless C_FORCE_ROOT is set, a knob that only allows pickle and never quiets the
    warning). Our workers accept JSON and msgpack only (tasks.app), so the warning is filtered while
    that holds: adding pickle to accept_content brings it back."""
    if CODE_RUNNING_CONTENT.isdisjoint(app.conf.accept_content):
        warnings.filterwarnings("ignore", category=SecurityWarning)
