"""`ovms status`: what a running cluster is doing, at a glance, as plain text tables (as `celery inspect`).

Per model version: state, the live workers holding it, messages queued, and its last minute (requests per
second, median latency, failures: what the workers ran, cluster-wide). Per worker: device, host, state and
the predict messages in flight. The figures come from Redis (tasks.status). Where from:

- `--broker_url` (or $OVMS_BROKER_URL without `--url`), with `--result_backend_url` when the result backend
  is apart: reads Redis itself, so it works with no api running, from any host that reaches Redis;
- otherwise the REST port of any api, `--url` (or $OVMS_URL, else http://localhost:8000): GET /v1/status,
  the same document, for an operator who reaches the api but not Redis (the job client's TLS and
  token options apply).

Errors are one line and exit 1, as the job client's (ovms.client).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import redis

from ovms.client_http import ClientError, failure
from ovms.text_table import table
from tasks.connections import check_reachable, redact, redis_client

REDIS_TIMEOUT_S = 5.0


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `status` subcommand of the client's parser (ovms.client)."""
    status = commands.add_parser("status", parents=[common], help="models, workers, queues and the last minute")
    status.add_argument(
        "--broker_url",
        help="read Redis at this URL instead of asking an api (env OVMS_BROKER_URL, used when --url is not given)",
    )
    status.add_argument(
        "--result_backend_url",
        default=os.environ.get("OVMS_RESULT_BACKEND_URL"),
        help="with --broker_url: the result backend's URL, when apart (env OVMS_RESULT_BACKEND_URL)",
    )
    status.add_argument("--json", action="store_true", help="print the document as JSON instead of tables")
    status.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    broker_url = args.broker_url or (None if args.url_given else os.environ.get("OVMS_BROKER_URL"))
    if args.broker_url and args.url_given:
        raise ClientError("give --url (ask an api) or --broker_url (read Redis), not both")
    if broker_url:
        document, source = _from_redis(broker_url, args.result_backend_url), f"Redis {redact(broker_url)}"
    else:
        document, source = _from_api(args), args.url
    if args.json:
        print(json.dumps(document))
    else:
        print(render(document, source))
    return 0


def _from_redis(broker_url: str, backend_url: str | None) -> dict[str, Any]:
    from tasks.status import read_status

    try:
        check_reachable(broker_url, "broker")
        if backend_url:
            check_reachable(backend_url, "result backend")
    except RuntimeError as exc:
        raise ClientError(str(exc)) from None
    options = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    broker = redis_client(broker_url, **options)
    store = redis_client(backend_url, **options) if backend_url else broker
    try:
        return read_status(store, broker).to_json()
    except redis.RedisError as exc:
        raise ClientError(f"Redis {redact(broker_url)}: {type(exc).__name__}: {exc}") from None
    finally:
        broker.close()
        store.close()


def _from_api(args: argparse.Namespace) -> dict[str, Any]:
    reply = args.http.get(f"{args.url}/v1/status", timeout=30)
    if reply.status_code != 200:
        raise ClientError(failure(reply))
    return reply.json()


ON_DEMAND = "ON DEMAND"  # the state shown for an AVAILABLE version no worker holds in memory (a request loads it)


def render(document: dict[str, Any], source: str) -> str:
    """The tables an operator reads: model versions, then workers."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(document["time"]))
    versions = [
        (
            row["model"],
            str(row["version"]),
            ON_DEMAND if row["state"] == "AVAILABLE" and not row.get("resident", True) else row["state"],
            ",".join(row["workers"]) or "-",
            "-" if row["queued"] is None else str(row["queued"]),
            f"{row['requests_per_s']:.1f}",
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.1f}",
            str(row["failed"]),
        )
        for row in document["versions"]
    ]
    workers = [
        (
            row["worker_id"],
            row["device"],
            row["host"] or "-",
            row["state"],
            str(row["in_flight"]),
            ",".join(row["models"]),
        )
        for row in document["workers"]
    ]
    return "\n".join(
        [
            f"{when} from {source}; REQ/S, P50 and FAILED: the last {document['window_s']:.0f} s, cluster-wide",
            "",
            *table(("MODEL", "VERSION", "STATE", "WORKERS", "QUEUED", "REQ/S", "P50 MS", "FAILED"), versions),
            "",
            *table(("WORKER", "DEVICE", "HOST", "STATE", "IN FLIGHT", "MODELS"), workers),
        ]
    )
