"""Inference: resolve the model version, validate the inputs, dispatch them to the model's workers
(tasks.dispatcher) and await the answer, within the api's admission (api.admission)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future

from api.admission import Admission, request_bytes
from inference.errors import InvalidArgument
from inference.priorities import priority_level
from inference.request import InferenceRequest, InferenceResult
from inference.validation import RequestTensor, validate_inputs
from tasks.dispatcher import Dispatcher
from tasks.link import RedisLink
from tasks.registry import RegistryView, Target

# Client-given names quoted in an error message, and their characters: a message travels in a gRPC
# trailer or an HTTP body, and must stay small whatever the request holds.
NAMES_QUOTED = 10
NAME_CHARS = 100
INLINE_REQUEST_BYTES = 64 << 10  # requests up to this size are decoded and queued on the event loop


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
            deadline = self._deadline(timeout_s)
            target, request = self._request(name, version, inputs, output_filter, deadline, priority)
            return _with_precisions(target, self._dispatcher.infer(target, request))

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
            deadline = self._deadline(timeout_s)
            loop = asyncio.get_running_loop()
            if nbytes <= INLINE_REQUEST_BYTES and self._registry.serves(name):
                target, request = self._request(name, version, inputs(), output_filter, deadline, priority)
                future, publish = self._dispatcher.enqueue(target, request)
                if publish:
                    await loop.run_in_executor(executor, self._dispatcher.publish_waiting, target)
            else:

                def submit() -> tuple[Target, InferenceRequest, Future[InferenceResult]]:
                    target, request = self._request(name, version, inputs(), output_filter, deadline, priority)
                    return target, request, self._dispatcher.submit(target, request)

                target, request, future = await loop.run_in_executor(executor, submit)
            return _with_precisions(target, await self._dispatcher.outcome(request, future))

    def _deadline(self, timeout_s: float | None) -> float:
        return time.time() + (timeout_s if timeout_s is not None else self._default_timeout_s)

    def _request(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, RequestTensor],
        output_filter: list[str] | None,
        deadline: float,
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
        )
        return target, request


def _with_precisions(target: Target, result: InferenceResult) -> InferenceResult:
    result.precisions = {name: target.signature.outputs[name].precision for name in result.outputs}
    return result
