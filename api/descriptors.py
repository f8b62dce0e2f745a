"""File descriptors: every connection is one, and REST, gRPC, the Redis clients and files share the api's
table. Each port may hold a share of what is free at start, so that a flood of connections on both ports
at once still leaves descriptors for Redis (without which nothing is served)."""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("serving")

CONNECTION_SHARE = 0.4  # of the descriptors free at start, for each port: 20 % stays for Redis and files


def raise_open_file_limit() -> int:
    """Lift the soft limit of open files to the hard one, and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("Could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connections_per_port(open_file_limit: int) -> int:
    """The most connections one port (REST or gRPC) may hold open at once."""
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux
        open_now = 0
    return max(1, int((open_file_limit - open_now) * CONNECTION_SHARE))
