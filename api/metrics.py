"""Prometheus metrics, in the spirit of OVMS's names, scraped at GET /metrics on the REST port.

Worker-side figures (time queued, inference time, executed batch size) travel back with every result,
so one scrape of an api process covers the whole path of the requests it served; queue depths and
live workers are read from Redis and the registry at scrape time.

With `--grpc_workers N` > 1 the api runs as N processes and the supervisor that starts them sets
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode): counters and histograms are kept in
files there, so a scrape of any process sums them over all of them (and over processes that exited:
totals never go back), while the gauges read from Redis come from the scraped process alone, once.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.values import MultiProcessValue

from api.tenants import current_tenant
from inference.errors import ServingError, TenantOverLimit
from inference.request import InferenceResult
from inference.statistics import (
    LIFECYCLE_FIELDS,
    LOAD_BUCKETS_S,
    LOAD_MS,
    LOAD_REASONS,
    UNLOAD_REASONS,
    VersionKey,
    load_bucket_field,
    load_field,
    unload_field,
)
from tasks.link import RedisLink
from tasks.queue_depth import queue_depths
from tasks.registry import RegistryView
from tasks.routing import JOB_EVENTS_KEY
from tasks.statistics import read_fields

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's; it reads it when first imported
SLOT_ENV = "OVMS_API_PROCESS_SLOT"  # which of the supervisor's N api processes this is (0..N-1)
_MICROSECONDS = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000)


class Tracker:
    def __init__(self) -> None:
        self.version = ""
        self.result: InferenceResult | None = None

    def done(self, version: int | None, result: InferenceResult | None = None) -> None:
        self.version = str(version or "")
        self.result = result


class ServingMetrics:
    def __init__(self, registry_view: RegistryView, broker: redis.Redis, store: redis.Redis, link: RedisLink) -> None:
        """`broker`: where the model queues are; `store`: the result backend, with the workers' statistics."""
        self.registry = CollectorRegistry()
        self._served = _served_by_this_process(self.registry)  # its file by pid: made before the slot's
        _write_files_of_this_slot()
        labels = ["name", "version", "interface", "method", "tenant"]
        self._success = Counter("ovms_requests_success", "Requests answered", labels, registry=self.registry)
        self._fail = Counter("ovms_requests_fail", "Requests failed", [*labels, "code"], registry=self.registry)
        self._request_time = Histogram(
            "ovms_request_time_us",
            "Request time in the api, microseconds",
            ["name", "version", "interface", "tenant"],
            buckets=_MICROSECONDS,
            registry=self.registry,
        )
        self._queue_time = Histogram(
            "ovms_queue_time_us",
            "From publishing a request to the start of its inference, microseconds",
            ["name", "version"],
            buckets=_MICROSECONDS,
            registry=self.registry,
        )
        self._inference_time = Histogram(
            "ovms_inference_time_us",
            "OpenVINO inference time of the batch that served a request, microseconds",
            ["name", "version"],
            buckets=_MICROSECONDS,
            registry=self.registry,
        )
        self._by_priority = Counter(
            "ovms_requests_by_priority",
            "Predicts answered, by the priority level they ran at (1 is the highest)",
            ["name", "priority"],
            registry=self.registry,
        )
        self._queue_time_by_priority = Histogram(
            "ovms_queue_time_by_priority_us",
            "From publishing a request to the start of its inference, by its priority level, microseconds",
            ["name", "priority"],
            buckets=_MICROSECONDS,
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "ovms_executed_batch_size",
            "Rows of the inference that served a request",
            ["name", "version"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self._refused = Counter(
            "ovms_tenant_refused",
            "Calls and job submissions refused beyond a tenant's limit (rps, inflight, job_samples)",
            ["tenant", "limit"],
            registry=self.registry,
        )
        self._queues = _QueueCollector(registry_view, broker, store, link)
        self._view = registry_view
        self._shared_dir = os.environ.get(MULTIPROCESS_DIR_ENV)
        if not self._shared_dir:
            self.registry.register(self._queues)

    @contextmanager
    def track(self, interface: str, method: str, name: str) -> Iterator[Tracker]:
        """Count and time one request; the caller reports the version (and predict result) it got.
        Requests for model names no worker knows count under name "" (no model has that name), answered
        or not (a v2 ModelReady answers false for them): a series per name a client makes up would grow the
        api's memory without bound. Each request counts under its caller's tenant (api.tenants: the token
        file names a bounded set; "" without one)."""
        tracker = Tracker()
        started = time.perf_counter()
        tenant = current_tenant().name
        self._served.inc()
        try:
            yield tracker
        except ServingError as error:
            self._fail.labels(self._label(name), tracker.version, interface, method, tenant, error.grpc_code).inc()
            raise
        except Exception:
            self._fail.labels(self._label(name), tracker.version, interface, method, tenant, "INTERNAL").inc()
            raise
        self._success.labels(self._label(name), tracker.version, interface, method, tenant).inc()
        if tracker.result is not None:
            seconds = time.perf_counter() - started
            self._observe_predict(name, tracker.version, interface, tenant, seconds, tracker.result)

    def _observe_predict(
        self, name: str, version: str, interface: str, tenant: str, seconds: float, result: InferenceResult
    ) -> None:
        self._request_time.labels(name, version, interface, tenant).observe(seconds * 1e6)
        self._queue_time.labels(name, version).observe(result.queue_s * 1e6)
        self._inference_time.labels(name, version).observe(result.infer_s * 1e6)
        self._batch_size.labels(name, version).observe(result.batch_size)
        if result.priority:
            self._by_priority.labels(name, str(result.priority)).inc()
            self._queue_time_by_priority.labels(name, str(result.priority)).observe(result.queue_s * 1e6)

    def tenant_refused(self, error: TenantOverLimit) -> None:
        """Count a refusal beyond a tenant's limit (tenants come from the token file: a bounded set)."""
        self._refused.labels(error.tenant, error.limit).inc()

    def _label(self, name: str) -> str:
        return name if self._view.knows(name) else ""

    def exposition(self) -> bytes:
        if not self._shared_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # what every process wrote, summed; Redis's gauges read once, here
        MultiProcessCollector(registry, self._shared_dir)
        registry.register(self._queues)
        return generate_latest(registry)


def _write_files_of_this_slot() -> None:
    """In multiprocess mode, name the files of the metrics made from now on by this process's slot rather
    than its pid (prometheus_client's default): a replacement for a process that died goes on from its
    counts, in its files, so the directory holds N processes' files however many restarts there were
    (by pid, each restart left two more files that every scrape reads for as long as the server runs).
    The per-pid gauge, made before, keeps its file by pid, which mark_process_dead removes."""
    slot = os.environ.get(SLOT_ENV)
    if os.environ.get(MULTIPROCESS_DIR_ENV) and slot is not None:
        identifier = f"slot{int(slot)}"
        values.ValueClass = MultiProcessValue(lambda: identifier)


def _served_by_this_process(registry: CollectorRegistry) -> Gauge:
    """`ovms_api_process_requests{pid}`: how the kernel spread requests over the api processes. In
    multiprocess mode prometheus_client adds the pid label itself, and ("liveall") drops the series of a
    process that exited (mark_process_dead); a single process labels its one series the same way."""
    name, documentation = "ovms_api_process_requests", "Requests this api process took, by its process id"
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        return Gauge(name, documentation, registry=registry, multiprocess_mode="liveall")
    return Gauge(name, documentation, ["pid"], registry=registry).labels(str(os.getpid()))


_JOB_EVENTS = (  # (metric, help, field of JOB_EVENTS_KEY)
    ("ovms_job_dead_letters", "Job chunks that failed into their job's dead letters, cluster-wide", "dead_lettered"),
    ("ovms_job_retried_chunks", "Dead letters queued again by POST /v1/jobs/{id}/retry, cluster-wide", "retried"),
    ("ovms_job_callback_retries", "Failed job callback attempts tried again, cluster-wide", "callback_retries"),
)


class _QueueCollector(Collector):
    """Read at scrape time: whether Redis answers, the live workers, messages waiting in each model queue,
    and the async jobs' inferences (left out while Redis is unreachable: a scrape never waits for it).

    Job chunks run on workers, from a job queue, for no api's request, so no api counts them as it counts
    requests: the workers count them in the cluster-wide statistics (tasks.statistics), and every api
    reports those totals — the same figures from each, as `ovms_live_workers` (take max, not sum, across
    api commands)."""

    def __init__(self, registry_view: RegistryView, broker: redis.Redis, store: redis.Redis, link: RedisLink) -> None:
        self._view = registry_view
        self._broker = broker  # where the model queues are
        self._store = store  # where the statistics are
        self._link = link

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("ovms_redis_up", "1 while this api reaches its broker and result backend, else 0")
        up.add_metric([], float(self._link.up))
        yield up
        workers = GaugeMetricFamily("ovms_live_workers", "Workers whose heartbeat is current")
        workers.add_metric([], len(self._view.live_workers()))
        yield workers
        depth = GaugeMetricFamily(
            "ovms_queue_depth", "Messages waiting in a model's queue (all its priority levels)", labels=["queue"]
        )
        queues = self._view.queues()
        if not self._link.up:
            return
        try:
            lengths = queue_depths(self._broker, queues)
        except redis.RedisError:
            return
        for queue, length in zip(queues, lengths, strict=True):
            depth.add_metric([queue], length)
        yield depth
        yield from self._jobs()
        yield from self._loads()

    def _jobs(self) -> Iterator[CounterMetricFamily]:
        labels = ["name", "version"]
        chunks = CounterMetricFamily(
            "ovms_job_chunks", "Async job chunks run by the workers, cluster-wide", labels=[*labels, "outcome"]
        )
        samples = CounterMetricFamily(
            "ovms_job_inferences", "Samples of async job chunks that succeeded, cluster-wide", labels=labels
        )
        versions = self._versions()
        try:
            totals = read_fields(self._store, versions, ("job_chunk_count", "job_fail_count", "job_inference_count"))
        except redis.RedisError:
            return
        for (name, version), (succeeded, failed, rows) in zip(versions, totals, strict=True):
            chunks.add_metric([name, str(version), "success"], succeeded)
            chunks.add_metric([name, str(version), "fail"], failed)
            samples.add_metric([name, str(version)], rows)
        yield chunks
        yield samples
        yield from self._job_events()

    def _job_events(self) -> Iterator[CounterMetricFamily]:
        """Dead letters, retries and callbacks, counted cluster-wide in Redis by whoever saw them happen."""
        try:
            counts = {key.decode(): int(value) for key, value in self._store.hgetall(JOB_EVENTS_KEY).items()}
        except (redis.RedisError, ValueError):
            return
        for name, documentation, field in _JOB_EVENTS:
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], counts.get(field, 0))
            yield family
        callbacks = CounterMetricFamily(
            "ovms_job_callbacks", "Job callbacks delivered or given up, cluster-wide", labels=["outcome"]
        )
        callbacks.add_metric(["delivered"], counts.get("callbacks_delivered", 0))
        callbacks.add_metric(["failed"], counts.get("callbacks_failed", 0))
        yield callbacks

    def _loads(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """Each version's loads and unloads by reason, cluster-wide, and how long its loads took (the versions
        that were ever loaded: every one a worker serves)."""
        labels = ["name", "version"]
        loads = CounterMetricFamily(
            "ovms_model_loads", "Model version loads by the workers, cluster-wide", labels=[*labels, "reason"]
        )
        unloads = CounterMetricFamily(
            "ovms_model_unloads", "Model version unloads by the workers, cluster-wide", labels=[*labels, "reason"]
        )
        seconds = HistogramMetricFamily(
            "ovms_model_load_seconds", "Time to fetch, compile and warm up a model version", labels=labels
        )
        versions = self._versions()
        try:
            totals = read_fields(self._store, versions, LIFECYCLE_FIELDS)
        except redis.RedisError:
            return
        for (name, version), fields in zip(versions, totals, strict=True):
            counts = dict(zip(LIFECYCLE_FIELDS, fields, strict=True))
            loaded = [counts[load_field(reason)] for reason in LOAD_REASONS]
            if not any(loaded):
                continue
            key = [name, str(version)]
            for reason, count in zip(LOAD_REASONS, loaded, strict=True):
                loads.add_metric([*key, reason], count)
            for reason in UNLOAD_REASONS:
                unloads.add_metric([*key, reason], counts[unload_field(reason)])
            cumulative = list(itertools.accumulate(counts[load_bucket_field(bound)] for bound in LOAD_BUCKETS_S))
            buckets = [(f"{bound:g}", count) for bound, count in zip(LOAD_BUCKETS_S, cumulative, strict=True)]
            seconds.add_metric(key, [*buckets, ("+Inf", sum(loaded))], counts[LOAD_MS] / 1000)
        yield loads
        yield unloads
        yield seconds

    def _versions(self) -> list[VersionKey]:
        """Every version a worker reports, of every model: the statistics hold keys for no others."""
        versions = []
        for name in self._view.served_model_names():
            try:
                versions += [(name, version) for version in sorted(self._view.versions(name))]
            except ServingError:  # its repository cannot be read
                continue
        return versions
