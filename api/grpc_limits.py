"""What bounds the work one gRPC client can make the server hold, on the event loop's thread.

Calls are counted in two phases: waiting for their request message (half-open streams, slow senders:
AwaitedRequests, enforced for every method by the RequestReader interceptor) and being served (the
request arrived, the answer has not left: CallLimit). Stalled calls never turn a fresh call away: when
the first bound is full, the call that has waited longest is pushed out instead. The second bound
counts only calls whose request has arrived, i.e. real work. A call can also be run within a scope
(`within`: its tenant and the tenant's limits, api.auth), entered before its request is read.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from inference.errors import InvalidArgument, ResourceExhausted, ServingError

T = TypeVar("T")

PUSHED_OUT = "Too many calls are waiting for their request message; this one waited longest"
_NO_DEADLINE_S = 1e6  # grpc reports a huge time_remaining() when the client set no deadline
RETRY_AFTER = "retry-after"  # trailing metadata: seconds, for an error that says when to retry

CallScope = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


class CallLimit:
    """At most `limit` calls served at once; beyond it a call is refused at once with RESOURCE_EXHAUSTED
    instead of queueing without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.in_progress >= self.limit:
            raise ResourceExhausted(f"Too many calls in progress on this server ({self.limit}); retry later")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


class AwaitedRequests:
    """At most `limit` calls waiting for their request message across the server; when a new call finds
    it full, the call that has waited longest ends with RESOURCE_EXHAUSTED. An honest request arrives
    within milliseconds of its call, so what gets pushed out is what stalls, however many streams or
    connections a client opens."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[asyncio.Task, None] = {}  # in arrival order: the longest waiting first
        self._pushed_out: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    async def receive(self, requests: AsyncIterator[T]) -> T:
        """The call's one request message (INVALID_ARGUMENT if it is missing or not a valid message)."""
        task = asyncio.current_task()
        assert task is not None
        if len(self._waiting) >= self.limit:
            longest = next(iter(self._waiting))
            del self._waiting[longest]
            self._pushed_out.add(longest)
            longest.cancel()
        self._waiting[task] = None
        try:
            return await anext(requests)
        except StopAsyncIteration:
            raise InvalidArgument("Missing request message") from None
        except DecodeError as exc:
            raise InvalidArgument(f"Invalid request message: {exc}") from None
        except asyncio.CancelledError:
            if task not in self._pushed_out:
                raise  # the client went away
            self._pushed_out.discard(task)
            raise ResourceExhausted(PUSHED_OUT) from None
        finally:
            self._waiting.pop(task, None)


class RequestReader(grpc.aio.ServerInterceptor):
    """Turns every method with a unary request into a request-streaming one whose handler reads that
    request through AwaitedRequests: grpc.aio runs a request-streaming handler as soon as the call
    arrives, while it reads a unary request before any code of ours runs, without bound or timeout.
    The client sees the same protocol. Put it after the token check, which refuses without reading."""

    def __init__(self, awaited: AwaitedRequests) -> None:
        self._awaited = awaited

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        return self._reading(handler)

    def _reading(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def read(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await self._awaited.receive(requests)
            except ServingError as error:
                await abort(context, error)

        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not handler.response_streaming:

            async def unary_response(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await handler.unary_unary(await read(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(unary_response, **serializers)

        async def streamed_response(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            responses = handler.unary_stream(await read(requests, context), context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    await context.write(response)
            else:  # a coroutine that writes with context.write (grpc.health.v1 Watch)
                await responses

        return grpc.stream_stream_rpc_method_handler(streamed_response, **serializers)


def deadline_s(context: grpc.aio.ServicerContext) -> float | None:
    """The seconds left before the call's deadline, None when the client set none."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < _NO_DEADLINE_S else None


async def abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    """End the call with the error's code and message, and a `retry-after` trailer when it has one."""
    retry_after_s = getattr(error, "retry_after_s", None)
    trailer = ((RETRY_AFTER, str(retry_after_s)),) if retry_after_s is not None else ()
    await context.abort(grpc.StatusCode[error.grpc_code], error.message, trailing_metadata=trailer)


def within(handler: grpc.RpcMethodHandler, scope: CallScope) -> grpc.RpcMethodHandler:
    """The handler, run inside `scope(context)` from the call's start (before its request is read) until
    it returns; a ServingError on entering the scope ends the call (`abort`)."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    kind = "_".join(
        "stream" if streaming else "unary" for streaming in (handler.request_streaming, handler.response_streaming)
    )
    behaviour = getattr(handler, kind)

    async def entered(stack: AsyncExitStack, context: grpc.aio.ServicerContext) -> None:
        try:
            await stack.enter_async_context(scope(context))
        except ServingError as error:
            await abort(context, error)

    if not handler.response_streaming:

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with AsyncExitStack() as stack:
                await entered(stack, context)
                return await behaviour(request, context)

        return getattr(grpc, f"{kind}_rpc_method_handler")(unary_response, **serializers)

    async def streamed_response(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with AsyncExitStack() as stack:
            await entered(stack, context)
            responses = behaviour(request, context)
            if inspect.isasyncgen(responses):
                async for response in responses:
                    await context.write(response)
            else:  # a coroutine that writes with context.write
                await responses

    return getattr(grpc, f"{kind}_rpc_method_handler")(streamed_response, **serializers)
