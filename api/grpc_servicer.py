"""What every gRPC service of the server shares (TF Serving's in api.grpc_service, KServe v2's in
api.kserve.grpc_service): the data plane and thread pool a call works with, and one decorator that bounds,
counts and times a call and turns its errors into gRPC status codes."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from api.dataplane import DataPlane
from api.grpc_limits import CallLimit
from api.metrics import ServingMetrics
from api.priority import PRIORITY_METADATA, priority_text
from inference.errors import Internal, ServingError

log = logging.getLogger("serving")

LARGE_RESPONSE_BYTES = 1 << 20  # outputs above this are encoded off the event loop
RETRY_AFTER_KEY = "retry-after"  # trailing metadata of an error the client may retry later: seconds, as HTTP's
T = TypeVar("T")


class Servicer:
    """The data plane, the metrics, the thread pool that runs anything blocking or CPU-heavy off the event
    loop, and the bound on calls in progress. A subclass names its protocol for the metrics (`interface`)
    and says which model a request names (`model_name`)."""

    interface = ""

    def __init__(self, dataplane: DataPlane, metrics: ServingMetrics, executor: Executor, calls: CallLimit) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._executor = executor
        self._calls = calls

    def model_name(self, request: Any) -> str:
        raise NotImplementedError

    async def _off_loop(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))


def serving_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Bound, count and time the call, and turn ServingErrors into gRPC status codes; anything unexpected
    is INTERNAL, never a crash. The method reports what it served to the tracker it is given."""

    async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            with (
                self._metrics.track(self.interface, method.__name__, self.model_name(request)) as tracker,
                self._calls.admit(),
            ):
                return await method(self, request, context, tracker)
        except ServingError as error:
            retry = () if error.retry_after_s is None else ((RETRY_AFTER_KEY, str(error.retry_after_s)),)
            await context.abort(grpc.StatusCode[error.grpc_code], error.message, trailing_metadata=retry)
        except Exception as exc:
            log.exception("Unexpected error in %s", method.__name__)
            error = Internal(f"Internal error: {exc}")
            await context.abort(grpc.StatusCode.INTERNAL, error.message)

    wrapper.__name__ = method.__name__
    return wrapper


def metadata_priority(context: grpc.aio.ServicerContext) -> int:
    """The priority level in the call's `ovms-priority` metadata (0 without one: the model's default)."""
    text = next((value for key, value in context.invocation_metadata() or () if key == PRIORITY_METADATA), None)
    return priority_text(text if isinstance(text, str) else None, f"{PRIORITY_METADATA} metadata")
