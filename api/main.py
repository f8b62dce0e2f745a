"""The `ovms` command: everything in one command, or only the `api` or a `worker` role."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from inference.logs import setup_logging
from inference.settings import ServerSettings, UsageError, parse_command_line
from tasks.connections import check_reachable

log = logging.getLogger("serving")

USAGE_EXIT_CODE = 64


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("submit", "jobs", "result"):
        from api.client import main as client_main

        return client_main(argv)
    setup_logging()
    try:
        settings = parse_command_line(argv)
        if settings.role != "all" and not settings.broker_url:
            raise UsageError(f"the {settings.role} role needs --broker_url or OVMS_BROKER_URL")
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return USAGE_EXIT_CODE
    setup_logging(settings.log_level, settings.log_path)
    try:
        _check_redis(settings)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if settings.role == "worker":
        from tasks.worker import run_worker

        return run_worker(settings, settings.broker_url)
    if settings.role == "api":
        return run_api(settings, settings.broker_url)
    from api.supervisor import Supervisor

    return Supervisor(settings, argv).run()


def _check_redis(settings: ServerSettings) -> None:
    """Fail at start, saying why, when a given broker or result backend cannot be used (wrong password,
    TLS settings, unreachable), rather than retry forever; the embedded Redis needs no check."""
    if settings.broker_url:
        check_reachable(settings.broker_url, "broker")
    if settings.result_backend_url:
        check_reachable(settings.result_backend_url, "result backend")


def wait_for_stop_signal(extra_check: threading.Event | None = None) -> None:
    """Block until SIGINT/SIGTERM (or `extra_check` is set).

    The handlers only flip a flag: taking a lock (Event.set) inside a signal handler deadlocks when a
    second signal arrives while the first handler holds it.
    """
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: received.append(signum))
    while not received and not (extra_check is not None and extra_check.is_set()):
        time.sleep(0.2)


def run_api(settings: ServerSettings, broker_url: str) -> int:
    from api.server import ApiServer

    try:
        server = ApiServer(settings, broker_url)
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


if __name__ == "__main__":
    sys.exit(main())
