"""After fuzzing: nothing left behind in Redis, and an api process whose memory did not run away."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tasks.routing import payload_key

RSS_GROWTH_BOUND = 200 << 20  # loose: allocator caches and warm-up growth stay far below it, a real leak does not
SETTLE_S = 10.0  # claim checks are deleted with the reply; job chunks need a moment on the worker


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def assert_no_leftovers(redis_url: str, api_pid: int, rss_before: int) -> None:
    """No request tensors (claim checks) remain in Redis, and the api's RSS grew by less than the bound."""
    client = redis.Redis.from_url(redis_url)
    pattern = payload_key("*")
    deadline = time.monotonic() + SETTLE_S
    while (left := list(client.scan_iter(match=pattern))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"claim-check payloads left in Redis: {left[:5]}"
    growth = rss_bytes(api_pid) - rss_before
    assert growth < RSS_GROWTH_BOUND, f"api RSS grew by {growth >> 20} MB"
