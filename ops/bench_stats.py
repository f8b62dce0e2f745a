"""What one benchmark cell measured: the window, the requests completed in it, latency percentiles, CPU."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from proc_cpu import CpuWindow


@dataclass(frozen=True)
class Window:
    """The measured interval in perf_counter seconds; requests are issued from before `start` (warmup) to `end`."""

    start: float
    end: float

    @classmethod
    def after_warmup(cls, warmup_s: float, duration_s: float) -> Window:
        start = time.perf_counter() + warmup_s
        return cls(start, start + duration_s)

    def open(self) -> bool:
        """Whether new requests should still be issued."""
        return time.perf_counter() < self.end

    def counts(self, ended: float) -> bool:
        return self.start <= ended <= self.end

    def wall_clock(self) -> tuple[float, float]:
        """(start, end) as `time.time()` values, for another process or a thread that sleeps until them."""
        offset = time.time() - time.perf_counter()
        return self.start + offset, self.end + offset


@dataclass
class Recorder:
    """Collects the requests that complete inside a window (thread-safe enough: appends under the GIL)."""

    window: Window
    latencies_s: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    completed: int = 0  # successes in and out of the window (Redis traffic is counted over both)

    def success(self, started: float, ended: float, batch_size: int | None = None) -> None:
        self.completed += 1
        if self.window.counts(ended):
            self.latencies_s.append(ended - started)
            if batch_size is not None:
                self.batch_sizes.append(batch_size)

    def failure(self, ended: float, kind: str) -> None:
        if self.window.counts(ended):
            self.errors[kind] += 1

    def stats(self) -> Stats:
        return Stats(
            requests=len(self.latencies_s),
            seconds=self.window.end - self.window.start,
            latencies_ms=np.array(self.latencies_s) * 1000.0,
            batch_sizes=list(self.batch_sizes),
            errors=Counter(self.errors),
            completed=self.completed,
        )


@dataclass
class Stats:
    """The outcome of one measurement."""

    requests: int
    seconds: float
    latencies_ms: np.ndarray
    batch_sizes: list[int]
    errors: Counter
    completed: int = 0
    redis_bytes: int = 0  # written to and read from Redis during the whole cell
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per request in the window, by role

    @property
    def redis_kb_per_request(self) -> float:
        return self.redis_bytes / self.completed / 1000 if self.completed and self.redis_bytes else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def mean_batch(self) -> float:
        return float(np.mean(self.batch_sizes)) if self.batch_sizes else float("nan")

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def cpu(self, *roles: str) -> float:
        """CPU ms per request of these roles together (NaN when none was measured)."""
        present = [self.cpu_ms[role] for role in roles if role in self.cpu_ms]
        return sum(present) if present else float("nan")


def stats_from_report(report: dict[str, Any]) -> Stats:
    """Stats from the JSON report of ops/v2_load.py."""
    return Stats(
        requests=len(report["latencies_s"]),
        seconds=report["seconds"],
        latencies_ms=np.array(report["latencies_s"]) * 1000.0,
        batch_sizes=[],
        errors=Counter(report["errors"]),
        completed=report["completed"],
    )


Measure = Callable[[int, Window, CpuWindow], Stats]  # (concurrency, window, cpu) -> the window's stats


def measure_cell(
    measure: Measure, concurrency: int, warmup_s: float, duration_s: float, server_roles: dict[int, str]
) -> Stats:
    """One cell: `measure` drives the load (registering its client process with the CpuWindow) while the CPU of
    the server's processes and the client's is read at the window's edges; CPU ms per request go in the stats."""
    window = Window.after_warmup(warmup_s, duration_s)
    with CpuWindow(*window.wall_clock(), server_roles) as cpu:
        stats = measure(concurrency, window, cpu)
    stats.cpu_ms = cpu.ms_per_request(stats.requests)
    return stats
