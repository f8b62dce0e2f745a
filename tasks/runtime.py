"""Worker side of a predict message: fetch the tensors, validate late, infer, build the reply."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import redis

from inference.batcher import Arrivals, BatchResult, DynamicBatcher
from inference.errors import (
    VERSION_RETIRED,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ServingError,
    plain_message,
)
from inference.image_decoder import decode_images
from inference.manager import Lease, ModelManager
from inference.model import CompiledVersion
from inference.priorities import JOB_LEVEL, Priority, nearest_level
from inference.request import InferenceRequest, Tensors
from inference.statistics import InferenceStatistics
from inference.validation import RequestTensor, validate_inputs
from tasks.budget import ByteBudget
from tasks.claims import claim
from tasks.memory import LARGE_REQUEST_BYTES, TrimSoon
from tasks.messages import ComputedOutputs, PredictEnvelope, PredictReply, RequestFailure, ResultEntry, unpack_requests
from tasks.routing import payload_key

log = logging.getLogger("serving")


class PredictActivity:
    """How many predict messages this worker is serving: job chunks wait for none (tasks.job_feeder)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._serving = 0

    @contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            self._serving += 1
        try:
            yield
        finally:
            with self._cond:
                self._serving -= 1
                self._cond.notify_all()

    @property
    def count(self) -> int:
        return self._serving

    def wait_until_idle(self, timeout_s: float) -> bool:
        """True once no predict is being served; False if there still is one after `timeout_s`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._serving == 0, timeout_s)


class WorkerRuntime:
    def __init__(
        self,
        manager: ModelManager,
        store: redis.Redis,
        worker_id: str,
        max_inflight_bytes: int,
        statistics: InferenceStatistics,
        predicts: PredictActivity | None = None,
    ) -> None:
        """`statistics`: where each request is counted (inference.statistics); `predicts`: the count of
        predicts being served (the heartbeat publishes it)."""
        self._manager = manager
        self._statistics = statistics
        self._store = store
        self.worker_id = worker_id
        self.budget = ByteBudget(max_inflight_bytes, f"worker {worker_id} (--worker_max_inflight_mb)")
        self._trim = TrimSoon()
        self.predicts = predicts or PredictActivity()

    def serve(self, task_id: str, envelope: PredictEnvelope, claims_owner: str = "") -> PredictReply:
        """Run every request of one message; each gets its own outputs or its own error.
        `claims_owner`: the waiting api's reply list, whose claims hash this worker claims the message in
        (see tasks.claims); none for a job chunk (its worker's taken list is its claim, see
        tasks.job_queue). A version not in memory is loaded first (inference.manager.acquire), within the
        message's deadline; the version is held until the reply is built, so it is not unloaded under it. A
        message whose tensors do not fit the worker's in-flight budget is refused before they are fetched
        (RESOURCE_EXHAUSTED), unless it is an async job's chunk: no client waits to retry it, so it is run
        (and counted) anyway; job chunks are bounded by their own size. Every request is counted in the
        statistics of the version that served or failed it — but not one for a version this worker does
        not hold (there is none to count it for)."""
        received = time.time()
        try:
            lease = self._manager.acquire(
                envelope.model,
                envelope.version,
                not all(entry.pinned for entry in envelope.requests),
                envelope.deadline,
            )
        except ServingError as error:  # its load did not end within the deadline, or failed
            return self._failed(envelope, error, received)
        if lease is None:
            return self._failed(envelope, NotFound(VERSION_RETIRED), received)
        with lease, ExitStack() as fallbacks:
            return self._serve_held(task_id, envelope, claims_owner, lease.batcher, received, fallbacks)

    def _serve_held(
        self,
        task_id: str,
        envelope: PredictEnvelope,
        claims_owner: str,
        batcher: DynamicBatcher,
        received: float,
        fallbacks: ExitStack,
    ) -> PredictReply:
        nbytes = envelope.payload_size
        refuse = not all(entry.any_batch for entry in envelope.requests)
        try:
            self.budget.reserve(nbytes, refuse=refuse)
        except ServingError as error:
            return self._failed(envelope, error, received, batcher.compiled)
        held = _HeldBytes(self.budget, nbytes, refuse, fallbacks)
        try:
            return self._serve(task_id, envelope, claims_owner, batcher, received, held)
        finally:
            self.budget.release(held.total)
            if nbytes >= LARGE_REQUEST_BYTES:
                # The hiredis reader of the connection that fetched the payload keeps a buffer of its size
                # until that connection reads again: idle connections are closed (they reconnect when used).
                self._store.connection_pool.disconnect(inuse_connections=False)
            self._trim.after(held.total)  # the result is stored after this returns: trim a little later

    def _serve(
        self,
        task_id: str,
        envelope: PredictEnvelope,
        claims_owner: str,
        batcher: DynamicBatcher,
        received: float,
        held: _HeldBytes,
    ) -> PredictReply:
        """Every request is made ready (its images decoded) before the first is submitted, so that the
        batcher, told they are coming, can put them in one inference."""
        with batcher.incoming(len(envelope.requests)) as arrivals:
            try:
                requests = self._requests(task_id, envelope, claims_owner)
            except ServingError as error:
                return self._failed(envelope, error, received, batcher.compiled)
            ready = [(request, self._ready(batcher, request, held)) for request in requests]
            priority = scheduled_as(envelope)
            started = [
                (request, self._start(batcher, request, inputs, arrivals, held, priority)) for request, inputs in ready
            ]
            del ready  # decoded images are freed as their inference ends, not kept until the reply
        return PredictReply(
            self.worker_id,
            {
                request.request_id: self._finish(request, future, batcher.compiled, received)
                for request, future in started
            },
        )

    def _failed(
        self, envelope: PredictEnvelope, error: ServingError, received: float, counted: CompiledVersion | None = None
    ) -> PredictReply:
        """The reply that fails every request of a message with `error`, each counted as a failure of the
        `counted` version."""
        if counted is not None:
            now = time.time()
            for entry in envelope.requests:
                queued_ns = _ns(now - (entry.queued_at or received))
                self._statistics.failed(counted.name, counted.version, queued_ns, entry.any_batch)
        return PredictReply(self.worker_id, {entry.request_id: RequestFailure(error) for entry in envelope.requests})

    def _requests(self, task_id: str, envelope: PredictEnvelope, claims_owner: str) -> list[InferenceRequest]:
        if time.time() > envelope.deadline:
            raise DeadlineExceeded("Deadline exceeded before the request reached a worker")
        with self._store.pipeline(transaction=False) as pipe:
            pipe.get(payload_key(task_id))
            if claims_owner:
                claim(pipe, claims_owner, task_id, self.worker_id)
            payload = pipe.execute()[0]
        if payload is None:
            raise DeadlineExceeded("The request's tensors expired before a worker could run it")
        try:
            return unpack_requests(envelope, payload)
        except ValueError as exc:
            raise InvalidArgument(f"Malformed predict message: {exc}") from None

    def _ready(self, batcher: DynamicBatcher, request: InferenceRequest, held: _HeldBytes) -> Tensors | ServingError:
        """The request's inputs as `batcher` takes them — checked late (the version may differ from what the
        api saw), images decoded — or why it cannot run."""
        try:
            if time.time() > request.deadline:
                raise DeadlineExceeded("Deadline exceeded before the request reached the model")
            if request.pinned and batcher.compiled.version != request.version:
                raise NotFound(VERSION_RETIRED)
            signature = batcher.compiled.signature
            if request.any_batch:
                signature = signature.with_any_batch()
            inputs = decode_images(signature, request.inputs, request.deadline, held.reserve)
            tensors = {name: RequestTensor(None, array.shape, values=array) for name, array in inputs.items()}
            return validate_inputs(signature, tensors)
        except ServingError as error:
            return error

    def _start(
        self,
        batcher: DynamicBatcher,
        request: InferenceRequest,
        inputs: Tensors | ServingError,
        arrivals: Arrivals,
        held: _HeldBytes,
        priority: Priority,
    ) -> Future[BatchResult]:
        """Queue the ready request for batching."""
        if isinstance(inputs, ServingError):
            return _failed(inputs)
        try:
            return batcher.submit(inputs, arrivals, priority, _waited(request))
        except NotFound:  # the version closed a moment ago: a request that named none takes the new default
            lease = None if request.pinned else self._default_now(request.model)
            fallback = lease.batcher if lease is not None else None
            if fallback is None or fallback is batcher:
                return _failed(NotFound(VERSION_RETIRED))
            held.fallbacks.enter_context(lease)
            inputs = self._ready(fallback, request, held)
            if isinstance(inputs, ServingError):
                return _failed(inputs)
            try:
                return fallback.submit(inputs, None, priority, _waited(request))
            except ServingError as error:
                return _failed(error)

    def _default_now(self, model: str) -> Lease | None:
        """The default version, if it is in memory (a fallback does not wait for a load)."""
        try:
            return self._manager.acquire(model, 0, True, 0.0)
        except ServingError:
            return None

    def _finish(
        self, request: InferenceRequest, future: Future[BatchResult], chosen: CompiledVersion, received: float
    ) -> ResultEntry:
        """The request's answer, counted for the version that computed it (a failure: for the `chosen` one).
        Its time queued and in all begin when the api queued it, or else when this worker `received` it."""
        queued_at = request.queued_at or received
        result = self._outcome(request, future)
        if isinstance(result, RequestFailure):
            self._statistics.failed(chosen.name, chosen.version, _ns(time.time() - queued_at), request.any_batch)
            return result
        outputs: Tensors = result.outputs
        if request.output_filter:
            outputs = {name: outputs[name] for name in request.output_filter if name in outputs}
        computed = result.compiled
        precisions = {name: spec.precision for name, spec in computed.signature.outputs.items()}
        entry = ComputedOutputs.pack(
            outputs,
            precisions,
            version=computed.version,
            batch=result.batch_rows,
            started=result.started_at,
            infer_s=result.infer_s,
        )
        self._statistics.succeeded(
            computed.name,
            computed.version,
            result.rows,
            _ns(result.started_at - queued_at),
            _ns(time.time() - queued_at),
            result.execution,
            request.any_batch,
        )
        return entry

    @staticmethod
    def _outcome(request: InferenceRequest, future: Future[BatchResult]) -> BatchResult | RequestFailure:
        try:
            return future.result(timeout=max(request.deadline - time.time(), 0) + 1.0)
        except ServingError as error:
            return RequestFailure(error)
        except FutureTimeout:
            return RequestFailure(DeadlineExceeded("Deadline exceeded during inference"))
        except Exception as exc:  # an inference failure must fail this request, never the worker
            log.exception("Inference failed for %s version %d", request.model, request.version)
            return RequestFailure(Internal(f"Inference failed: {plain_message(exc)}"))


class _HeldBytes:
    """What one message holds in the worker's budget: its payload, then its decoded images, reserved
    request by request as they are decoded (a request whose images do not fit fails alone)."""

    def __init__(self, budget: ByteBudget, payload: int, refuse: bool, fallbacks: ExitStack) -> None:
        """`fallbacks`: the leases of the default versions that requests fell back to, released with the message's."""
        self._budget = budget
        self._refuse = refuse
        self.total = payload
        self.fallbacks = fallbacks

    def reserve(self, nbytes: int) -> None:
        """Images that alone decode to more than the whole budget are refused (a few hundred KB of JPEG can
        claim a GiB): the budget's rule that a holder alone is always admitted is for tensors, whose size
        the api's --max_request_mb bounds. A job's chunk is run anyway, as its payload is."""
        if self._refuse and nbytes > self._budget.limit_bytes:
            raise InvalidArgument(
                f"Invalid input - the images decode to {nbytes / 2**20:.1f} MiB, more than this worker holds for "
                f"all its requests ({self._budget.limit_bytes / 2**20:.1f} MiB, --worker_max_inflight_mb)"
            )
        self._budget.reserve(nbytes, refuse=self._refuse, already_mine=self.total)
        self.total += nbytes


def scheduled_as(envelope: PredictEnvelope) -> Priority:
    """How the message's requests are scheduled: as the api sent them (a level out of range, which no api sends,
    is taken as the nearest one), an async job's chunk below every level."""
    level = JOB_LEVEL if all(entry.any_batch for entry in envelope.requests) else nearest_level(envelope.priority)
    return replace(envelope.scheduling, level=level)


def _failed(error: ServingError) -> Future[BatchResult]:
    future: Future[BatchResult] = Future()
    future.set_exception(error)
    return future


def _waited(request: InferenceRequest) -> float:
    """How long the request has waited since the api queued it (its lane, Redis, this worker): it ages from
    then (inference.priorities). 0 when not known, or when the api's clock is ahead of this host's."""
    return max(time.time() - request.queued_at, 0.0) if request.queued_at else 0.0


def _ns(seconds: float) -> int:
    """A duration between two time.time() readings, in nanoseconds; never negative (the api that queued a
    request may run on another host, whose clock may be a little ahead)."""
    return max(int(seconds * 1e9), 0)
