"""`python -m ovms.healthcheck`: the container image's HEALTHCHECK, for whatever command line the container
runs (the image's entrypoint is `ovms`, so PID 1 is the server and /proc/1/cmdline holds its flags).

- all in one: healthy while it can serve its models, i.e. ready: the REST port answers /v1/health/ready
  (over TLS without verifying the certificate: this is the server itself), or, with no REST port, gRPC's
  `grpc.health.v1` answers SERVING on `--port` (SERVING only while ready). Its worker runs in the same
  container: one that hangs (its heartbeat lapses) or a model that cannot load shows as unhealthy, where
  mere liveness of the frontend would hide it.
- `ovms api`: live when the REST port answers /v1/health/live (else gRPC health, as above): its workers run
  elsewhere, and restarting the api would not bring them back.
- With client certificates required (--ssl_client_ca) a probe has none to show, so an accepted TCP
  connection is what it can check.
- `ovms worker`: live while a worker of this host keeps its registration in Redis (its heartbeat) and has
  loaded its models.
Exit code 0 healthy, 1 not (what Docker's HEALTHCHECK reads); the reason goes to stdout (`docker inspect`).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ovms.settings import ServerSettings, parse_command_line

PROBE_TIMEOUT_S = 4.0
LOCAL = "127.0.0.1"


# Celery retitles a worker's process when setproctitle is installed: `[celeryd: <name>:MainProcess] -active-
# (<the command line's arguments, joined by spaces>)`, one word in /proc/<pid>/cmdline.
CELERY_TITLE = re.compile(r"\[celeryd: [^\]]*\] [^(]*\((?P<arguments>.*)\)")


def server_arguments(cmdline: bytes) -> list[str]:
    """The `ovms` flags in a process's NUL-separated command line (`python /opt/venv/bin/ovms …`, `ovms …`
    or `python -m ovms …`), or in the title Celery gave a worker's process."""
    words = [word.decode() for word in cmdline.split(b"\0") if word]
    if len(words) == 1 and (title := CELERY_TITLE.fullmatch(words[0])):
        return title["arguments"].split()
    for index, word in enumerate(words):
        if Path(word).name == "ovms" or (word == "-m" and words[index + 1 : index + 2] == ["ovms"]):
            return words[index + (2 if word == "-m" else 1) :]
    raise ValueError(f"not an ovms command line: {' '.join(words)[:200]}")


def check(settings: ServerSettings) -> str:
    """Why the server of `settings` is healthy; raises OSError or ValueError saying why it is not."""
    if settings.role == "worker":
        return _worker_registered(settings)
    tls = bool(settings.ssl_certificate)
    if tls and settings.ssl_client_ca:
        socket.create_connection((LOCAL, settings.rest_port or settings.port), PROBE_TIMEOUT_S).close()
        return "accepts connections (client certificates required: not probed further)"
    if settings.rest_port:
        scheme = "https" if tls else "http"
        context = ssl._create_unverified_context() if tls else None  # the server probing itself
        probe = "ready" if settings.role == "all" else "live"
        url = f"{scheme}://{LOCAL}:{settings.rest_port}/v1/health/{probe}"
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S, context=context) as response:
                return f"{url} answered {response.status}"
        except urllib.error.HTTPError as error:
            raise ValueError(f"{url} answered {error.code}") from None
    if tls:
        socket.create_connection((LOCAL, settings.port), PROBE_TIMEOUT_S).close()
        return f"gRPC port {settings.port} accepts connections"
    return _grpc_serving(settings.port)


def _grpc_serving(port: int) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{LOCAL}:{port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
    if status.status != health_pb2.HealthCheckResponse.SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status.status)
        raise ValueError(f"gRPC health on port {port}: {name}")
    return f"gRPC health on port {port}: SERVING"


def _worker_registered(settings: ServerSettings) -> str:
    from tasks.connections import redis_client
    from tasks.routing import WORKER_PREFIX

    # registrations live in the result backend (beside the heartbeats): the broker unless given apart
    url = settings.result_backend_url or settings.broker_url or ""
    client = redis_client(url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S)
    try:
        keys = list(client.scan_iter(match=f"{WORKER_PREFIX}*-{socket.gethostname()}-*", count=1000))
        snapshots = [json.loads(value) for value in client.mget(keys) if value] if keys else []
    finally:
        client.close()
    if not any(snapshot.get("loaded") for snapshot in snapshots):
        raise ValueError(f"no worker of host {socket.gethostname()} is registered with its models loaded")
    return f"{len(snapshots)} worker(s) of this host registered"


def main(cmdline_path: str = "/proc/1/cmdline") -> int:
    try:
        settings = parse_command_line(server_arguments(Path(cmdline_path).read_bytes()))
        print(check(settings))
    except Exception as exc:  # any failure is "unhealthy", said in one line
        print(f"unhealthy: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
