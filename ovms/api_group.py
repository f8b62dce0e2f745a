"""What an api process of a `--grpc_workers` supervisor's group (ovms.api_processes) knows of its group:
that it is in one, and how it tells the supervisor that it listens. No imports of the api: the command
line reads it before choosing a role."""

from __future__ import annotations

import os

READY_FD_ENV = "OVMS_API_READY_FD"  # set for an api process of a group: where it says it listens


def in_group() -> bool:
    """Whether this `ovms api` process is one of a supervisor's group."""
    return READY_FD_ENV in os.environ


def announce_listening() -> None:
    """In an api process of a group: tell the supervisor that its servers listen."""
    fd = int(os.environ.pop(READY_FD_ENV))
    os.write(fd, b"+")
    os.close(fd)
