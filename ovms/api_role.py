"""`ovms api`: the protocol frontends only, on a given broker, until SIGINT / SIGTERM."""

from __future__ import annotations

import logging

from api.server import ApiServer
from ovms.settings import ServerSettings
from ovms.stop_signal import wait_for_stop_signal

log = logging.getLogger("serving")


def run_api_role(settings: ServerSettings) -> int:
    """Serve until stopped, then drain; returns the exit code."""
    try:
        server = ApiServer(settings, settings.broker_url)
        server.start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    try:
        wait_for_stop_signal()
    finally:
        log.info("Shutting down the api")
        server.stop()
    return 0
