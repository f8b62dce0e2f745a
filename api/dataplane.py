"""The one place both frontends call: resolve the model version, validate, dispatch, await."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager

import redis

from api.admission import Admission, request_bytes
from inference.errors import VERSION_NOT_FOUND, InvalidArgument, NotFound, ServingError
from inference.request import InferenceRequest, InferenceResult
from inference.signature import ModelSignature
from inference.states import VersionState, VersionStatus
from inference.validation import RequestTensor, validate_inputs
from tasks.control import request_reload
from tasks.dispatcher import Dispatcher
from tasks.jobs import JobLimits, JobStore
from tasks.link import OUTAGES, RedisLink
from tasks.registry import RegistryView, Target


class DataPlane:
    def __init__(
        self,
        registry: RegistryView,
        dispatcher: Dispatcher,
        default_timeout_s: float,
        store: redis.Redis,
        link: RedisLink,
        configured: Callable[[], list[str] | None],
        job_ttl_s: int,
        max_inflight_bytes: int,
        job_limits: JobLimits,
    ) -> None:
        self.link = link
        self._registry = registry
        self._dispatcher = dispatcher
        self._default_timeout_s = default_timeout_s
        self._store = store
        self._configured = configured
        self.jobs = JobStore(store, job_ttl_s, job_limits)
        self.admission = Admission(max_inflight_bytes)

    def expected_models(self) -> list[str]:
        """The models this server must serve to be ready: its configuration's when it has one, else the
        ones live workers are configured with."""
        configured = self._configured()
        return sorted(configured) if configured is not None else self._registry.served_model_names(active_only=True)

    @contextmanager
    def needs_redis(self) -> Iterator[None]:
        """Around work that reads or writes Redis: UNAVAILABLE at once while Redis is unreachable, and
        for an outage met on the way (never a 500, never a wait for a socket timeout)."""
        self.link.check()
        try:
            yield
        except OUTAGES as exc:
            raise self.link.failed(exc) from None

    def config_status(self) -> dict[str, list[VersionStatus]]:
        """Every known model's version statuses (GET /v1/config)."""
        with self.needs_redis():
            return self._config_status()

    def _config_status(self) -> dict[str, list[VersionStatus]]:
        statuses = {}
        for name in sorted(set(self.expected_models()) | set(self._registry.served_model_names())):
            try:
                statuses[name] = self.model_status(name, None)
            except ServingError:
                statuses[name] = []
        return statuses

    def reload_config(self) -> bool:
        """Every live worker re-reads its configuration now; True if anything was (un/re)loaded."""
        with self.needs_redis():
            outcome = request_reload(self._store, self._registry.live_workers())
            if outcome.errors:
                raise InvalidArgument("Configuration not applied: " + "; ".join(sorted(set(outcome.errors))))
            self._registry.refresh()
            return outcome.changed

    def submit_job(
        self,
        name: str,
        version: int | None,
        decode: Callable[[], dict[str, RequestTensor]],
        nbytes: int,
        owner: str | None = None,
    ) -> str:
        """Validate many samples (any number along the first dimension, at least one) and queue them as a
        job (of `owner`, with bearer tokens). `decode()` gives the job's tensors: it runs once
        `nbytes`, what it allocates, is held in the in-flight budget (an upload is unpacked only then)."""
        with self.needs_redis():
            target = self._registry.resolve(name, version)
        with self.admission.admit(nbytes), self.needs_redis():
            arrays = validate_inputs(target.signature.with_any_batch(), decode())
            if not next(iter(arrays.values())).shape[0]:
                raise InvalidArgument("A job needs at least one sample: its inputs have 0 rows")
            return self.jobs.submit(target, arrays, owner, pinned=bool(version))

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Ready = not draining, Redis reachable, and every known model has an AVAILABLE version on a
        live worker (as read from Redis since it was last reachable again); with the per-model answers."""
        if not self.link.up or self._registry.refreshed_at < self.link.up_since:
            return False, dict.fromkeys(self.expected_models(), False)
        models = {}
        for name in self.expected_models():
            try:
                models[name] = any(s.state == VersionState.AVAILABLE for s in self.model_status(name, None))
            except ServingError:
                models[name] = False
        return bool(models) and all(models.values()) and not self.admission.closed, models

    def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        """Every version's status, or just the requested one (NOT_FOUND if it is unknown)."""
        with self.needs_redis():
            versions = self._registry.versions(name)
        if version:
            view = versions.get(version)
            if view is None:
                raise NotFound(VERSION_NOT_FOUND)
            return [view.status]
        return [view.status for _, view in sorted(versions.items())]

    def model_metadata(self, name: str, version: int | None) -> tuple[int, ModelSignature]:
        with self.needs_redis():
            target = self._registry.resolve(name, version)
        return target.version, target.signature

    def predict(
        self,
        name: str,
        version: int | None,
        inputs: dict[str, RequestTensor],
        output_filter: list[str] | None = None,
        timeout_s: float | None = None,
    ) -> InferenceResult:
        with self.admission.admit(request_bytes(inputs)), self.needs_redis():
            target, request = self._request(name, version, inputs, output_filter, self._deadline(timeout_s))
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
    ) -> InferenceResult:
        """predict() for an asyncio frontend: decoding (`inputs()`), validation and publishing run on
        `executor`, and the wait for the answer holds no thread. `nbytes`: the request's size as received,
        held in the in-flight budget from before it is decoded."""
        with self.admission.admit(nbytes), self.needs_redis():
            deadline = self._deadline(timeout_s)

            def submit() -> tuple[Target, InferenceRequest, Future[InferenceResult]]:
                target, request = self._request(name, version, inputs(), output_filter, deadline)
                return target, request, self._dispatcher.submit(target, request)

            target, request, future = await asyncio.get_running_loop().run_in_executor(executor, submit)
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
    ) -> tuple[Target, InferenceRequest]:
        target = self._registry.resolve(name, version)
        arrays = validate_inputs(target.signature, inputs)
        if output_filter:
            unknown = [o for o in output_filter if o not in target.signature.outputs]
            if unknown:
                raise InvalidArgument(f"Invalid output name - not found in model outputs: {', '.join(unknown)}")
        request = InferenceRequest(
            name, target.version, arrays, list(output_filter or []) or None, deadline, pinned=bool(version)
        )
        return target, request


def _with_precisions(target: Target, result: InferenceResult) -> InferenceResult:
    result.precisions = {name: target.signature.outputs[name].precision for name in result.outputs}
    return result
