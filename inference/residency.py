"""Which model versions a worker keeps in memory (inference.manager loads the others on demand).

Off unless asked for: a worker memory budget (`--worker_memory_mb`) or a model's `idle_unload_s`. Then each
version that was loaded has a `VersionUse`: its size, the requests holding it (leases) and when it was last
used. A version unused for its model's idle_unload_s, or the least recently used one when a load would pass
the budget, is unloaded — never while a request holds it — and stays servable: the next request loads it.

A version's size is what the worker's resident memory grew by while it loaded (compile and warm-up), at least
its files' size, and the most any of its loads measured: a load that reuses memory freed by an unload just
before (the allocator keeps some) grows the process less than the version takes. Before its first load, it is
taken for twice its files' size. The first version compiled on a device
also pays the plugin's start-up and its kernels' first compilation (≈ 40 MB more on CPU for `resnet`): under a
budget it is compiled once and freed before the load that is measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

UNMEASURED_FACTOR = 2  # a version never loaded here is taken for this many times its files' size
EVICTION_WAIT_S = 60.0  # longest wait for the requests holding a version chosen for eviction
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class VersionUse:
    """One loaded (or once loaded) version's place in memory."""

    size_bytes: int = 0  # the most any of its loads measured
    load_s: float = 0.0  # how long its last load took
    last_used: float = 0.0  # time.monotonic() of its last request's end, or of its load
    leases: int = 0  # requests holding it now: it is not unloaded under them
    evicting: bool = False  # chosen to go: no new request takes it
    loading_since: float = 0.0  # time.time() a load on demand began (0: none runs)

    def idle_for(self, now: float) -> float:
        return now - self.last_used if self.leases == 0 else 0.0


def victims_by_age(uses: dict[tuple[str, int], VersionUse], resident: set[tuple[str, int]]) -> list[tuple[str, int]]:
    """The resident versions in the order a load unloads them: unused ones first, each group least recently
    used first (a version in use is taken only when no other frees enough; its requests finish first)."""
    return sorted(resident, key=lambda key: (uses[key].leases > 0, uses[key].last_used))


def process_rss_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere, where sizes fall back to the files' size)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def files_bytes(directory: Path) -> int:
    """The size of a version's files (its IR .xml and .bin, or its ONNX file, …)."""
    try:
        return sum(entry.stat().st_size for entry in directory.rglob("*") if entry.is_file())
    except OSError:
        return 0
