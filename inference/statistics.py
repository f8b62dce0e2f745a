"""Inference statistics, per model version, as Triton's statistics extension reports them: counted in a
worker's memory as it serves (a few additions under a lock per request and per batch, never a Redis call),
and taken from it by whoever publishes them (tasks.statistics adds them to cluster-wide totals in Redis).

Per request: success or failure with its duration, its rows (inference_count), its time queued, and the
compute times of the batch that served it (each request of a batch is credited with the batch's, as Triton
does). Per batch (one OpenVINO inference): execution_count, the last inference's time, and the compute
times by batch size.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, fields

# Distinct batch sizes counted per model version. Batch sizes are bounded by max_batch_size, but a request
# larger than it runs alone as a batch of its own size (and job chunks have theirs): a client sending every
# size would otherwise grow the counts without bound. Beyond it, an execution still counts in
# execution_count, without a batch_stats row.
MAX_BATCH_SIZES = 256


@dataclass(frozen=True)
class Execution:
    """One OpenVINO inference of a batch, as the batcher timed it (nanoseconds)."""

    rows: int
    compute_input_ns: int  # joining the requests' inputs and handing them to OpenVINO
    compute_infer_ns: int  # the inference, OpenVINO's copy of its outputs included
    compute_output_ns: int  # cutting the outputs into each request's rows


@dataclass
class BatchCounts:
    """The executions of one batch size."""

    count: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0

    def add(self, other: BatchCounts) -> None:
        for name in BATCH_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class VersionCounts:
    """The counts of one model version: a worker's since it last published them, or the cluster's totals.
    The queue and compute durations are those of the successful requests (their count is success_count)."""

    inference_count: int = 0  # rows of successful requests
    execution_count: int = 0  # OpenVINO inferences that succeeded
    last_inference_ms: int = 0  # of the latest of them, milliseconds since the epoch
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    job_chunk_count: int = 0  # of success_count: the async job chunks (a chunk is one request)
    job_inference_count: int = 0  # of inference_count: the samples of those chunks
    job_fail_count: int = 0  # of fail_count: the job chunks that failed
    batches: dict[int, BatchCounts] = field(default_factory=dict)  # by batch size
    lifecycle: dict[str, int] = field(default_factory=dict)  # loads and unloads: LIFECYCLE_FIELDS

    def add(self, other: VersionCounts) -> None:
        """Add `other`'s counts to these (the batch sizes beyond MAX_BATCH_SIZES left out)."""
        for name in SCALAR_FIELDS:
            if name != "last_inference_ms":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_inference_ms = max(self.last_inference_ms, other.last_inference_ms)
        for size, counts in other.batches.items():
            batch = self._batch(size)
            if batch is not None:
                batch.add(counts)
        for name, count in other.lifecycle.items():
            self.lifecycle[name] = self.lifecycle.get(name, 0) + count

    def executed(self, execution: Execution) -> None:
        self.execution_count += 1
        self.last_inference_ms = max(self.last_inference_ms, int(time.time() * 1000))
        batch = self._batch(execution.rows)
        if batch is not None:
            batch.add(
                BatchCounts(1, execution.compute_input_ns, execution.compute_infer_ns, execution.compute_output_ns)
            )

    def _batch(self, size: int) -> BatchCounts | None:
        batch = self.batches.get(size)
        if batch is None and len(self.batches) < MAX_BATCH_SIZES:
            batch = self.batches[size] = BatchCounts()
        return batch


LATENCY_BUCKETS_PER_OCTAVE = 4


def latency_bucket(ns: int) -> int:
    """The histogram bucket of a request's duration, for its one-minute median (`ovms status`): quarter
    octaves from 1 µs, so that a bucket's middle is within 10 % of any duration in it."""
    return max(0, math.floor(math.log2(max(ns, 1000) / 1000) * LATENCY_BUCKETS_PER_OCTAVE))


def bucket_middle_ms(bucket: int) -> float:
    """The geometric middle of a latency bucket, in milliseconds."""
    return 2 ** ((bucket + 0.5) / LATENCY_BUCKETS_PER_OCTAVE) / 1000


@dataclass
class RecentCounts:
    """One version's requests since they were last taken, for the figures of the last minute: the failed
    ones, and the successful ones by latency bucket (at most a few hundred buckets, whatever the traffic)."""

    fail: int = 0
    latency: dict[int, int] = field(default_factory=dict)


SCALAR_FIELDS = tuple(f.name for f in fields(VersionCounts) if f.name not in ("batches", "lifecycle"))

# Why a version was loaded or unloaded (inference.manager, inference.residency). Reload: a version or a
# configuration that changed while the worker runs; config: gone from its repository or the configuration.
STARTUP, DEMAND, RELOAD = "startup", "demand", "reload"
IDLE, BUDGET, CONFIG = "idle", "budget", "config"
LOAD_REASONS = (STARTUP, DEMAND, RELOAD)
UNLOAD_REASONS = (IDLE, BUDGET, CONFIG)

# Loads and unloads of a version, and how long its loads took: the sum, and
# a histogram whose buckets count the loads that took at most their bound and more than the one below it
# (longer ones only in the sum and the count).
LOAD_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOAD_MS = "load_ms"


def load_field(reason: str) -> str:
    return f"load:{reason}"


def unload_field(reason: str) -> str:
    return f"unload:{reason}"


def load_bucket_field(bound_s: float) -> str:
    return f"load_le:{bound_s:g}"


LIFECYCLE_FIELDS = (
    *(load_field(reason) for reason in LOAD_REASONS),
    *(unload_field(reason) for reason in UNLOAD_REASONS),
    LOAD_MS,
    *(load_bucket_field(bound) for bound in LOAD_BUCKETS_S),
)
BATCH_FIELDS = tuple(f.name for f in fields(BatchCounts))

VersionKey = tuple[str, int]  # (model, version)


class InferenceStatistics:
    """One worker's counts per model version since they were last taken. Thread-safe: the batcher threads,
    the predict threads and the publisher share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[VersionKey, VersionCounts] = {}
        self._recent: dict[VersionKey, RecentCounts] = {}

    def executed(self, model: str, version: int, execution: Execution) -> None:
        """One successful OpenVINO inference of a batch."""
        with self._lock:
            self._of(model, version).executed(execution)

    def succeeded(
        self,
        model: str,
        version: int,
        rows: int,
        queue_ns: int,
        request_ns: int,
        execution: Execution,
        job: bool = False,
    ) -> None:
        """One request answered: `rows` of its own, `queue_ns` waited before its batch's compute began,
        `request_ns` from being queued to its answer, computed in `execution`; `job`: an async job's chunk
        (counted as a request, and apart too: Prometheus shows jobs' inferences from these)."""
        with self._lock:
            counts = self._of(model, version)
            if job:
                counts.job_chunk_count += 1
                counts.job_inference_count += rows
            counts.inference_count += rows
            counts.success_count += 1
            counts.success_ns += request_ns
            counts.queue_ns += queue_ns
            counts.compute_input_ns += execution.compute_input_ns
            counts.compute_infer_ns += execution.compute_infer_ns
            counts.compute_output_ns += execution.compute_output_ns
            latency = self._recent.setdefault((model, version), RecentCounts()).latency
            bucket = latency_bucket(request_ns)
            latency[bucket] = latency.get(bucket, 0) + 1

    def failed(self, model: str, version: int, request_ns: int, job: bool = False) -> None:
        """One request failed, `request_ns` after it was queued; `job`: an async job's chunk."""
        with self._lock:
            counts = self._of(model, version)
            counts.job_fail_count += int(job)
            counts.fail_count += 1
            counts.fail_ns += request_ns
            self._recent.setdefault((model, version), RecentCounts()).fail += 1

    def loaded(self, model: str, version: int, reason: str, seconds: float) -> None:
        """A version was loaded (fetched, compiled, warmed up) in `seconds`, for `reason` (inference.residency)."""
        with self._lock:
            lifecycle = self._of(model, version).lifecycle
            for name, count in _load_counts(reason, seconds).items():
                lifecycle[name] = lifecycle.get(name, 0) + count

    def unloaded(self, model: str, version: int, reason: str) -> None:
        with self._lock:
            lifecycle = self._of(model, version).lifecycle
            lifecycle[unload_field(reason)] = lifecycle.get(unload_field(reason), 0) + 1

    def take(self) -> dict[VersionKey, VersionCounts]:
        """The counts since the last take, per model version; counting starts again from zero."""
        with self._lock:
            taken, self._counts = self._counts, {}
            return taken

    def take_recent(self) -> dict[VersionKey, RecentCounts]:
        """The requests since the last take, per model version, for the last minute's figures (not given
        back when they cannot be published: late, they would count in the wrong seconds)."""
        with self._lock:
            taken, self._recent = self._recent, {}
            return taken

    def give_back(self, taken: dict[VersionKey, VersionCounts]) -> None:
        """Counts that could not be published: they are added to the next take."""
        with self._lock:
            for key, counts in taken.items():
                self._of(*key).add(counts)

    def _of(self, model: str, version: int) -> VersionCounts:
        counts = self._counts.get((model, version))
        if counts is None:
            counts = self._counts[model, version] = VersionCounts()
        return counts


def _load_counts(reason: str, seconds: float) -> dict[str, int]:
    counts = {load_field(reason): 1, LOAD_MS: round(seconds * 1000)}
    bound = next((bound for bound in LOAD_BUCKETS_S if seconds <= bound), None)
    if bound is not None:
        counts[load_bucket_field(bound)] = 1
    return counts
