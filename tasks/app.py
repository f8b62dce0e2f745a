"""The one Celery app and all of its configuration."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from celery import Celery

from tasks.connections import celery_url, ssl_options, transport_options
from tasks.sentinel import is_sentinel
from tasks.settings import JobSettings

if TYPE_CHECKING:
    from tasks.runtime import WorkerRuntime


class ServingApp(Celery):
    """Celery, plus the runtime this app's worker serves predicts with: the worker's PredictRuntime step
    sets it while the worker runs (tasks.worker_steps), and the predict task reads it through its own
    `self.app`. None in an api process, and before or after a worker's run."""

    worker_runtime: WorkerRuntime | None = None


app = ServingApp("ovms", include=["tasks.predict"])

# A predict's deadline is seconds, kombu's redelivery of unacked messages takes the visibility
# timeout (an hour): its per-message bookkeeping (two Redis round trips) buys nothing here.
# A master that stops answering without closing its connections (frozen, or cut off by the network) must not
# hold a worker after Sentinel promoted another: no command waits more than socket_timeout, and kombu drops a
# BRPOP whose reply is overdue by health_check_interval (its default, 25 s, kept a worker away for ~50 s).
_STALL_OPTIONS = {"socket_keepalive": True, "socket_timeout": 5.0, "health_check_interval": 2}
_BROKER_TRANSPORT_OPTIONS = {**_STALL_OPTIONS, "ack_emulation": False}
_RESULT_TRANSPORT_OPTIONS = dict(_STALL_OPTIONS)
# The `celery` command (Flower) passes its --broker on as CELERY_BROKER_URL, which Celery reads before its
# own broker_url setting: a sentinel:// URL of ours is put there in Celery's form (see tasks.sentinel).
_COMMAND_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
if _COMMAND_BROKER_URL:
    os.environ["CELERY_BROKER_URL"] = celery_url(_COMMAND_BROKER_URL)

app.conf.update(
    # Never pickle: task messages are JSON (metadata only, tensors travel by claim check),
    # results are msgpack so output tensors stay raw bytes.
    task_serializer="json",
    result_serializer="msgpack",
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    event_serializer="json",
    task_create_missing_queues=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
    worker_consumer="tasks.consumer:PromptReconnectConsumer",  # back on a restarted Redis within a second
    broker_connection_max_retries=None,  # a worker waits for its broker for as long as it takes
    broker_transport_options={**_BROKER_TRANSPORT_OPTIONS, **transport_options(_COMMAND_BROKER_URL)},
    result_backend_transport_options=_RESULT_TRANSPORT_OPTIONS,
    task_track_started=False,
    result_expires=JobSettings.job_ttl_s,  # async job results (predict replies go to reply lists); the default
    # kombu takes rediss:// settings only from broker_use_ssl (without it, it would not verify the server's
    # certificate).
    broker_use_ssl=ssl_options(_COMMAND_BROKER_URL),
)


def configure(broker_url: str, result_backend_url: str | None = None, results_ttl_s: int | None = None) -> Celery:
    """Point the app at Redis; sync replies use our reply-list backend on the result Redis.
    `results_ttl_s`: how long stored (async job) results are kept."""
    backend_url = result_backend_url or broker_url
    app.conf.broker_url = celery_url(broker_url)
    app.conf.broker_use_ssl = ssl_options(broker_url)
    app.conf.broker_transport_options = {**_BROKER_TRANSPORT_OPTIONS, **transport_options(broker_url)}
    if results_ttl_s:
        app.conf.result_expires = results_ttl_s
    backend_class = "SentinelReplyBackend" if is_sentinel(backend_url) else "ReplyBackend"
    app.conf.result_backend = f"tasks.backend:{backend_class}+{celery_url(backend_url)}"
    app.conf.result_backend_transport_options = {**_RESULT_TRANSPORT_OPTIONS, **transport_options(backend_url)}
    app.conf.redis_backend_use_ssl = ssl_options(backend_url)
    return app
