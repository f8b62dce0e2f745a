"""The `ovms` command: everything in one command, or only the `api` or a `worker` role, a job client
command (`submit`, `jobs`, `result`, `cancel`), or `status`, what a running cluster is doing."""

from __future__ import annotations

import logging
import sys

from inference.logs import setup_logging
from ovms.api_group import in_group
from ovms.settings import ROLES, USAGE, ServerSettings, UsageError, parse_command_line
from tasks.connections import check_reachable

log = logging.getLogger("serving")

USAGE_EXIT_CODE = 64
CLIENT_COMMANDS = ("submit", "jobs", "result", "cancel", "retry", "status")  # ovms.client


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CLIENT_COMMANDS:
        from ovms.client import main as client_main

        return client_main(argv)
    setup_logging()
    try:
        settings = parse_command_line(argv)
        if settings.role != "all" and not settings.broker_url:
            raise UsageError(f"the {settings.role} role needs --broker_url or OVMS_BROKER_URL")
    except UsageError as exc:
        if len(argv) <= 1 and (not argv or argv[0] in ROLES):  # nothing given, but maybe a role: how to use it
            role = argv[0] if argv and argv[0] != "all" else ""
            usage = f"ovms {role} [flags]" if role else USAGE
            print(f"usage: {usage}\n(ovms {role + ' ' if role else ''}--help lists the flags)", file=sys.stderr)
        print(exc, file=sys.stderr)
        return USAGE_EXIT_CODE
    setup_logging(settings.log_level, settings.log_path)
    try:
        _check_redis(settings)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if settings.role == "worker":
        from ovms.worker_role import run_worker_role

        return run_worker_role(settings)
    if settings.role == "api":
        from ovms.api_role import run_api_role

        return run_api_role(settings, argv[1:])
    from ovms.all_in_one import Supervisor

    return Supervisor(settings, argv).run()


def _check_redis(settings: ServerSettings) -> None:
    """Fail at start, saying why, when a given broker or result backend cannot be used (wrong password,
    TLS settings, unreachable), rather than retry forever; the embedded Redis needs no check, nor an api
    process of a `--grpc_workers` group: its supervisor checked at its start, and a replacement for one that
    died must start while Redis is away (it answers UNAVAILABLE until Redis is back, as the others do),
    not fail until the supervisor gives up and stops every api process."""
    if in_group():
        return
    if settings.broker_url:
        check_reachable(settings.broker_url, "broker")
    if settings.result_backend_url:
        check_reachable(settings.result_backend_url, "result backend")
