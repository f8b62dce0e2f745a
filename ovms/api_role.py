"""`ovms api`: the protocol frontends only, on a given broker, until SIGINT / SIGTERM.

With `--grpc_workers N` > 1 it supervises N api processes sharing the ports (ovms.api_processes) and
serves nothing itself: the supervisor of the all-in-one, without Redis and workers. A frontend that
dies is then restarted while the others serve, which an api serving in the supervisor's own process
could not be.
"""

from __future__ import annotations

import logging

from api.server import ApiServer
from ovms.api_processes import announce_listening, in_group
from ovms.settings import ServerSettings
from ovms.stop_signal import wait_for_stop_signal

log = logging.getLogger("serving")


def run_api_role(settings: ServerSettings, argv: list[str]) -> int:
    """Serve until stopped, then drain; returns the exit code. `argv`: the flags (no role)."""
    grouped = in_group()
    if settings.grpc_workers > 1 and not grouped:
        from ovms.all_in_one import Supervisor

        return Supervisor(settings, argv, workers=False).run()
    try:
        server = ApiServer(settings, settings.broker_url, shared_ports=grouped)
        server.start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if grouped:
        announce_listening()
    try:
        wait_for_stop_signal()
    finally:
        log.info("Shutting down the api")
        server.stop()
    return 0
