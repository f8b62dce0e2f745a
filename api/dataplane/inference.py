"""Inference: resolve the model version, validate the inputs, dispatch them to the model's workers
(tasks.dispatcher) and await the answer, within the api's admission (api.admission). A request is the
caller's tenant's (api.tenants.CALLER, set by whatever accepted its token)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future

import redis

from api.admission import Admission, request_bytes
from api.tenants import current_tenant
from inference.errors import DeadlineExceeded, InvalidArgument, ServingError, still_loading
from inference.priorities import priority_level
from inference.request import InferenceRequest, InferenceResult
from inference.validation import RequestTensor, validate_inputs
from tasks.dispatcher import Dispatcher
from tasks.link import RedisLink
from tasks.registry import MergedVersion, RegistryView, Target

# Client-given names quoted in an error message, and their characters: a message travels in a gRPC
# trailer or an HTTP body, and must stay small whatever the request holds.
NAMES_QUOTED = 10
NAME_CHARS = 100
INLINE_REQUEST_BYTES = 64 << 10  # requests up to this size are decoded and queued on the event loop
TRIGGER_MIN_S = 1.0  # a request sent only to make a worker load its version lives at least this long


class InferenceService:
    def __init__(
        self,
        registry: RegistryView,
        dispatcher: Dispatcher,
        admission: Admission,
        link: RedisLink,
        default_timeout_s: float,
    ) -> None:
        self._registry = registry
        self._dispatcher = dispatcher
        self._admission = admission
        self._link = link
        self._default_timeout_s = default_timeout_s

    def predict(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, RequestTensor],
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> InferenceResult:
        """`priority`: the level the client asked for (inference.priorities; 0: the model's default)."""
        with self._admission.admit(request_bytes(inputs)), self._link.required():
            deadline, tenant = self._deadline(timeout_s), current_tenant().name
            target, request = self._request(name, version, inputs, output_filter, deadline, tenant, priority)
            self._unless_loading_too_long(target, request)
            try:
                return _with_precisions(target, self._dispatcher.infer(target, request))
            except DeadlineExceeded as late:
                raise self._after_deadline(target, request, late) from None

    async def predict_async(
        self,
        executor: Executor,
        name: str,
        version: int | None,
        inputs: Callable[[], dict[str, RequestTensor]],
        nbytes: int,
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> InferenceResult:
        """predict() for an asyncio frontend; the wait for the answer holds no thread. `nbytes`: the request's
        size as received, held in the in-flight budget from before it is decoded.

        A small request for a model the registry serves is decoded, validated and queued right here (a
        hand-over to `executor` and back costs ≈ 140 µs of CPU, more than all of that); only publishing it,
        when its lane may publish now, goes to `executor` (Redis I/O). Under load most requests join a
        message already on its way and never leave the event loop. A large request (decoding takes
        milliseconds), or one whose model needs a registry refresh, is handled on `executor` throughout."""
        with self._admission.admit(nbytes), self._link.required():
            deadline, tenant = self._deadline(timeout_s), current_tenant().name
            loop = asyncio.get_running_loop()
            if nbytes <= INLINE_REQUEST_BYTES and self._registry.serves(name):
                target, request = self._request(name, version, inputs(), output_filter, deadline, tenant, priority)
                if self._loads_too_long(target, request):
                    await loop.run_in_executor(executor, self._unless_loading_too_long, target, request)
                future, publish = self._dispatcher.enqueue(target, request)
                if publish:
                    await loop.run_in_executor(executor, self._dispatcher.publish_waiting, target)
            else:

                def submit() -> tuple[Target, InferenceRequest, Future[InferenceResult]]:
                    target, request = self._request(name, version, inputs(), output_filter, deadline, tenant, priority)
                    self._unless_loading_too_long(target, request)
                    return target, request, self._dispatcher.submit(target, request)

                target, request, future = await loop.run_in_executor(executor, submit)
            try:
                return _with_precisions(target, await self._dispatcher.outcome(request, future))
            except DeadlineExceeded as late:
                if not target.may_leave:
                    raise
                raise await loop.run_in_executor(executor, self._after_deadline, target, request, late) from None

    @staticmethod
    def _loads_too_long(target: Target, request: InferenceRequest) -> bool:
        """Whether the version is expected in memory only after the request's deadline (no live worker holds
        it, and its last load took longer than the request may wait)."""
        return target.ready_at is not None and target.ready_at > request.deadline

    def _unless_loading_too_long(self, target: Target, request: InferenceRequest) -> None:
        """A request that cannot wait for its version's load is answered now, UNAVAILABLE with Retry-After,
        rather than at its deadline (when its client has given up): it is published all the same, and
        makes a worker load the version (Redis I/O: not on an event loop)."""
        if self._loads_too_long(target, request):
            self._trigger_load(target, request)
            raise self._loading(target)

    def _trigger_load(self, target: Target, request: InferenceRequest) -> None:
        """Publish `request` only to make a worker load its version (Redis I/O: not on an event loop)."""
        request.deadline = max(request.deadline, time.time() + TRIGGER_MIN_S)
        with contextlib.suppress(ServingError):  # a full lane: the requests queued in it make the load start
            self._dispatcher.trigger(target, request)

    def _after_deadline(self, target: Target, request: InferenceRequest, late: DeadlineExceeded) -> ServingError:
        """What a request whose deadline passed answers: UNAVAILABLE with Retry-After if its version was out of
        memory when it was sent, or is now (it is loading), else DEADLINE_EXCEEDED (Redis I/O: not on an event
        loop). If no worker loads the version, the request may have passed its deadline before it was
        published: it is published now, so that the Retry-After it answers comes true."""
        if not target.may_leave:
            return late
        view = self._version_now(target)
        if target.resident and (view is None or view.resident):
            return late
        if view is None or not view.loading_on:
            self._trigger_load(target, request)
        return self._loading(target, view)

    def _loading(self, target: Target, view: MergedVersion | None = None) -> ServingError:
        """UNAVAILABLE with the seconds until the version is expected in memory (at least 1), as the registry
        sees it (`view`: as read already)."""
        view = view or self._version_now(target)
        now = time.time()
        ready_at = view.ready_at(now) if view is not None else target.ready_at
        worker = view.loading_on if view is not None else target.loading_on
        return still_loading(target.model, target.version, max(1, math.ceil((ready_at or now) - now)), worker)

    def _deadline(self, timeout_s: float | None) -> float:
        return time.time() + (timeout_s if timeout_s is not None else self._default_timeout_s)

    def _request(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, RequestTensor],
        output_filter: list[str] | None,
        deadline: float,
        tenant: str,
        priority: int,
    ) -> tuple[Target, InferenceRequest]:
        target = self._registry.resolve(name, version)
        level = priority_level(priority, target.default_priority)
        arrays = validate_inputs(target.signature, inputs)
        if output_filter:
            unknown = [o for o in output_filter if o not in target.signature.outputs]
            if unknown:
                named = ", ".join(f"{name:.{NAME_CHARS}}" for name in unknown[:NAMES_QUOTED])
                more = f" and {len(unknown) - NAMES_QUOTED} more" if len(unknown) > NAMES_QUOTED else ""
                raise InvalidArgument(f"Invalid output name - not found in model outputs: {named}{more}")
        request = InferenceRequest(
            name,
            target.version,
            arrays,
            list(output_filter or []) or None,
            deadline,
            pinned=bool(version),
            priority=level,
            tenant=tenant,
        )
        return target, request

    def _version_now(self, target: Target) -> MergedVersion | None:
        """The target's version as the workers report it now, or as last read while Redis does not answer."""
        try:
            return self._registry.version_now(target.model, target.version)
        except (redis.RedisError, OSError):
            return self._registry.all_models().get(target.model, {}).get(target.version)


def _with_precisions(target: Target, result: InferenceResult) -> InferenceResult:
    result.precisions = {name: target.signature.outputs[name].precision for name in result.outputs}
    return result
