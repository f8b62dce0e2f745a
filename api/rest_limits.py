"""HTTP limits in front of the REST app, on the server's event loop (an ASGI middleware).

Everything here runs before a request reaches a thread of the WSGI app, so a client that is slow,
silent or lying about its body costs a coroutine and its own bytes, never one of the app's threads:
- a request head (request line and headers) larger than `max_head_bytes` is 431, and a URL longer than
  `max_url_bytes` is 414 (the server itself stops buffering an unfinished head at MAX_HEAD_BYTES: 431);
- Content-Length together with Transfer-Encoding is 400 and the connection is closed (the framing is
  ambiguous: the classic request-smuggling shape);
- a body larger than `max_body_bytes` is 413: at once when Content-Length says so, else as soon as the
  chunks received go beyond it;
- a body that stops arriving for `body_idle_timeout_s` is 408, and one the client ends early is 400;
- the app is called only with the whole body received, with its real Content-Length.

It is the ASGI application hypercorn serves; `app` receives (scope, body, send) for each request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WholeRequestApp = Callable[[Scope, bytes, Send], Awaitable[None]]

MAX_HEAD_BYTES = 32 << 10  # request line and headers
MAX_URL_BYTES = 8 << 10  # path and query; request lines of well-behaved clients are far shorter
BODY_IDLE_TIMEOUT_S = 5.0  # a body with no byte for this long is cut


def body_too_large_message(max_body_bytes: int) -> str:
    return f"Request body too large: the limit is {max_body_bytes >> 20} MB (--max_request_mb)"


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpLimits:
    def __init__(
        self,
        app: WholeRequestApp,
        max_body_bytes: int,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_url_bytes: int = MAX_URL_BYTES,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._max_head_bytes = max_head_bytes
        self._max_url_bytes = max_url_bytes
        self._body_idle_timeout_s = body_idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # a WebSocket upgrade: not served
            await send({"type": "websocket.close", "code": 1003})
            return
        try:
            self._check_head(scope)
            body = await self._read_body(receive)
        except _Refused as refused:
            await _answer(send, refused.status, refused.message)
            return
        await self._app(_with_length(scope, len(body)), body, send)

    def _check_head(self, scope: Scope) -> None:
        url_bytes = len(scope["raw_path"]) + len(scope["query_string"])
        if url_bytes + sum(len(name) + len(value) + 4 for name, value in scope["headers"]) > self._max_head_bytes:
            raise _Refused(431, f"Request headers too large: the limit is {self._max_head_bytes} bytes")
        if url_bytes > self._max_url_bytes:
            raise _Refused(414, f"URL too long: the limit is {self._max_url_bytes} bytes")
        headers = {name.lower() for name, _ in scope["headers"]}
        if b"content-length" in headers and b"transfer-encoding" in headers:
            raise _Refused(400, "Content-Length and Transfer-Encoding together are refused")
        declared = next((value for name, value in scope["headers"] if name.lower() == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                raise _Refused(400, "Invalid Content-Length")
            if int(declared) > self._max_body_bytes:
                raise _Refused(413, body_too_large_message(self._max_body_bytes))

    async def _read_body(self, receive: Receive) -> bytes:
        """The body, once the client has sent all of it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self._body_idle_timeout_s)
            except TimeoutError:
                raise _Refused(
                    408, f"Request body timeout: nothing arrived for {self._body_idle_timeout_s:g} s"
                ) from None
            if message["type"] == "http.disconnect":
                raise _Refused(400, "Request body incomplete: the client closed the connection")
            data = message.get("body", b"")
            size += len(data)
            if size > self._max_body_bytes:
                raise _Refused(413, body_too_large_message(self._max_body_bytes))
            chunks.append(data)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _with_length(scope: Scope, length: int) -> Scope:
    """The scope with the body's real length as its only framing header (a chunked body is whole now)."""
    headers = [(name, value) for name, value in scope["headers"] if name.lower() not in _FRAMING]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


_FRAMING = (b"content-length", b"transfer-encoding")


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the api owns the app's resources."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def _answer(send: Send, status: int, message: str) -> None:
    """A JSON error, like the app's, and the connection closed: its framing cannot be trusted."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
