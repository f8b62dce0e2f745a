"""Runs the WSGI app (Flask) for requests whose body the event loop has already received in full.

One hop to a thread and one back per request: the app runs on one of `workers` threads, the first
EAGER_BYTES of its answer are collected there, and the loop writes them. A streaming bridge (a2wsgi)
crosses threads for every body read and every response part, which costs a scheduling delay each on a
busy machine. An answer longer than that (a job's result, streamed from Redis) is read on: one part per
hop, each written (and drained to the client) before the next is read, so a large answer never sits
whole in the api and a slow reader holds no thread.

The health probes run on threads of their own (PROBE_THREADS), so that liveness and readiness answer
at once even while every one of the `workers` threads is held by slow work.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

EAGER_BYTES = 1 << 20  # of an answer, collected in the app's thread before the loop starts writing
PROBE_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready"})
PROBE_THREADS = 2  # one probe of each kind at once (readiness may read Redis when a model is missing)


class WsgiBridge:
    def __init__(self, app: WsgiApp, workers: int) -> None:
        self._app = app
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ovms-rest")
        self.probe_executor = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="ovms-rest-probe")

    async def __call__(self, scope: MutableMapping[str, Any], body: bytes, send: Send) -> None:
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        executor = self.probe_executor if scope["path"] in PROBE_PATHS else self.executor
        run = contextvars.copy_context().run  # the request's context (api.admission.PREPAID_BYTES) in its thread
        status, headers, chunks, rest = await loop.run_in_executor(executor, run, self._run, environ)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            while rest is not None:
                chunk = await loop.run_in_executor(self.executor, next, rest, None)
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if rest is not None and hasattr(rest, "close"):
                await loop.run_in_executor(self.executor, rest.close)

    def _run(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], list[bytes], Iterator | None]:
        """Run the app; its status, headers, the answer's first parts, and the rest of it (None if the
        parts are all of it; else an iterator the caller reads on and closes)."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
            started[:] = [int(status.split(" ", 1)[0]), encoded]
            return chunks.append

        result = self._app(environ, start_response)
        parts = _non_empty(result)
        collected = 0
        try:
            for chunk in parts:
                chunks.append(chunk)
                collected += len(chunk)
                if collected >= EAGER_BYTES:
                    return started[0], started[1], chunks, _Closing(parts, result)
        except BaseException:
            if hasattr(result, "close"):
                result.close()
            raise
        if hasattr(result, "close"):
            result.close()
        return started[0], started[1], chunks, None


class _Closing(Iterator[bytes]):
    """The rest of an answer's parts; close() closes the app's iterable, as PEP 3333 asks."""

    def __init__(self, parts: Iterator[bytes], result: Iterable[bytes]) -> None:
        self._parts = parts
        self._result = result

    def __next__(self) -> bytes:
        return next(self._parts)

    def close(self) -> None:
        if hasattr(self._result, "close"):
            self._result.close()


def _non_empty(result: Iterable[bytes]) -> Iterator[bytes]:
    return (chunk for chunk in result if chunk)


def _environ(scope: MutableMapping[str, Any], body: bytes) -> dict[str, Any]:
    """PEP 3333's environ for an ASGI HTTP scope. A header whose name has an underscore is dropped (as nginx
    and gunicorn drop it): in the environ it would read as the dashed header the limits in front
    (api.rest_limits) did not see, e.g. `Content_Type` or `Inference_Header_Content_Length`."""
    server_host, server_port = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server_host,
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = scope["client"][0], str(scope["client"][1])
    for raw_name, raw_value in scope["headers"]:
        if b"_" in raw_name:
            continue
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
