"""HTTP limits in front of the REST app, on the server's event loop (an ASGI middleware).

Everything here runs before a request reaches a thread of the WSGI app, so a client that is slow,
silent or lying about its body costs a coroutine and its own bytes, never one of the app's threads:
- a request that is not HTTP/1.x (the HTTP/2 preface, `PRI * HTTP/2.0`; see api.rest_connections) is 400
  and the connection is closed;
- a request head (request line and headers) larger than `max_head_bytes` is 431, and a URL longer than
  `max_url_bytes` is 414 (the server itself stops buffering an unfinished head at MAX_HEAD_BYTES: 431);
- Content-Length together with Transfer-Encoding is 400 and the connection is closed (the framing is
  ambiguous: the classic request-smuggling shape);
- a body larger than `max_body_bytes` is 413: at once when Content-Length says so, else as soon as the
  chunks received go beyond it;
- a body that stops arriving for `body_idle_timeout_s` is 408, and so is one slower on average than
  MIN_BODY_BYTES_PER_S once BODY_GRACE_S have passed; one the client ends early is 400. A body is kept
  as one buffer, whatever the size of the parts it came in;
- with bearer tokens, a call that needs one and has none accepted is 401 from its head alone (api.auth),
  and the others run as their token's tenant (api.tenants.CALLER): beyond the tenant's requests a
  second or in flight (api.quotas), 429 with Retry-After, before any body byte is read;
- the bytes a body will take count against the api's in-flight budget (--max_inflight_mb) from the
  moment its head announces them: a Content-Length is reserved at once (429 if it does not fit beside
  what other requests hold), a chunked body as its parts arrive; JSON at JSON_BODY_FACTOR times its
  length, plus its lists, objects and strings once it has come (what parsing it takes; of a KServe v2
  inference with binary tensors, its JSON header only; a raw Content-Type lowers it only where the body
  is read raw), and the
  reservation lasts until the request is answered (the app's own admission takes only what goes beyond
  it: api.admission.PREPAID_BYTES); while the answer is written, the reservation covers at least the
  answer's part in hand (beyond the budget if need be: the bytes exist already), so answers a client is
  slow to read count too;
- the app is called only with the whole body received, with its real Content-Length.

It is the ASGI application hypercorn serves; `app` receives (scope, body, send) for each request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from typing import Any

from api.admission import PREPAID_BYTES, Admission
from api.auth import BearerTokens, rest_caller
from api.rest_http import MAX_TIMEOUT_S, TIMEOUT_HEADER
from api.tenants import Tenant, TenantScope, as_caller
from inference.errors import TOKEN_REFUSED, ResourceExhausted, ServingError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WholeRequestApp = Callable[[Scope, bytes, Send], Awaitable[None]]

MAX_HEAD_BYTES = 32 << 10  # request line and headers
MAX_URL_BYTES = 8 << 10  # path and query; request lines of well-behaved clients are far shorter
BODY_IDLE_TIMEOUT_S = 5.0  # a body with no byte for this long is cut
BODY_GRACE_S = 10.0  # then a body must have come at MIN_BODY_BYTES_PER_S on average
MIN_BODY_BYTES_PER_S = 16 << 10  # (the loop itself takes ~30k chunks a second: 1-byte chunks pass)
RETRY_AFTER_S = 1  # advised to clients of a full budget or queue (429) or a model without workers (503)
# json.loads makes a Python object of every number: measured 3x (random float32 text) to 9x ("0.0" values)
# the body's length, beside the body itself
JSON_BODY_FACTOR = 8
JSON_CONTAINER_BYTES = 64  # beyond it, per list or object (sys.getsizeof([]) is 56, {} 64)
JSON_QUOTE_BYTES = 32  # beyond it, per quote: a string is ~50 bytes however short
RAW_BODY_TYPES = ("application/octet-stream", "application/x-npy", "application/x-npz", "application/zip")
INFERENCE_HEADER_LENGTH = b"inference-header-content-length"  # KServe v2 binary tensors: the body's JSON part
V2_MODELS_PATH, V2_INFER_SUFFIX = "/v2/models/", "/infer"  # the routes that honour it (api.kserve.rest_models)
RAW_BODY_PATH = "/v1/jobs"  # the one route that reads a body of RAW_BODY_TYPES raw (api.rest_jobs)
TIMEOUT_HEADER_BYTES = TIMEOUT_HEADER.lower().encode()


def body_too_large_message(max_body_bytes: int) -> str:
    return f"Request body too large: the limit is {max_body_bytes >> 20} MB (--max_request_mb)"


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _Held:
    """What one request holds of the api's in-flight budget: its body's first `parsed_bytes` (all of it for
    None) times `factor`, the rest once."""

    def __init__(self, admission: Admission, factor: int, parsed_bytes: int | None = None) -> None:
        self._admission = admission
        self._factor = factor
        self._parsed_bytes = parsed_bytes
        self._body_bytes = 0  # of the body, reserved so far
        self.nbytes = 0

    def grow(self, body_bytes: int | None) -> None:
        """Reserve `body_bytes` more of the body: 429 if they do not fit beside what others hold."""
        if not body_bytes:
            return
        start, end = self._body_bytes, self._body_bytes + body_bytes
        parsed = body_bytes if self._parsed_bytes is None else max(0, min(end, self._parsed_bytes) - start)
        self._reserve(parsed * self._factor + body_bytes - parsed)
        self._body_bytes = end

    def parsed(self, body: bytes) -> None:
        """Reserve what the parsed part's lists, objects and strings take beyond JSON_BODY_FACTOR: each is a
        Python object of ~60 bytes, however few bytes of JSON it is (`[],` is 3): 20 MB of `[],` held 550 MB."""
        if self._factor == 1:
            return
        end = len(body) if self._parsed_bytes is None else min(len(body), self._parsed_bytes)
        containers = body.count(b"[", 0, end) + body.count(b"{", 0, end)
        self._reserve(containers * JSON_CONTAINER_BYTES + body.count(b'"', 0, end) * JSON_QUOTE_BYTES)

    def _reserve(self, nbytes: int) -> None:
        try:
            self._admission.budget.reserve(nbytes, already_mine=self.nbytes)
        except ResourceExhausted as refused:
            raise _Refused(429, refused.message, {b"retry-after": str(RETRY_AFTER_S).encode()}) from None
        self.nbytes += nbytes

    def cover(self, nbytes: int) -> None:
        """Hold at least `nbytes` (an answer's part being written), beyond the budget if need be."""
        if nbytes > self.nbytes:
            self._admission.budget.reserve(nbytes - self.nbytes, refuse=False)
            self.nbytes = nbytes

    def release(self) -> None:
        if self.nbytes:
            self._admission.released(self.nbytes)
            self.nbytes = 0


def _held(admission: Admission, scope: Scope) -> _Held:
    """What a request's body will hold: JSON is parsed, except a raw type's body where the route reads it raw
    (a job upload); of a KServe v2 inference with binary tensors (the Inference-Header-Content-Length
    header), only that JSON header is. Elsewhere the headers do not lower the count: every other route
    parses its whole body as JSON whatever its Content-Type says."""
    headers = {name.lower(): value for name, value in scope["headers"]}
    path = scope["path"]
    json_length = headers.get(INFERENCE_HEADER_LENGTH, b"")
    if json_length.isdigit() and path.startswith(V2_MODELS_PATH) and path.endswith(V2_INFER_SUFFIX):
        return _Held(admission, JSON_BODY_FACTOR, int(json_length))
    mimetype = headers.get(b"content-type", b"").decode("latin-1").partition(";")[0].strip().lower()
    return _Held(admission, 1 if mimetype in RAW_BODY_TYPES and path == RAW_BODY_PATH else JSON_BODY_FACTOR)


class HttpLimits:
    def __init__(
        self,
        app: WholeRequestApp,
        max_body_bytes: int,
        admission: Admission,
        tokens: BearerTokens | None = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_url_bytes: int = MAX_URL_BYTES,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
        tenant_scope: TenantScope = as_caller,
    ) -> None:
        """`tenant_scope`: what each call runs within, as its tenant's (api.quotas: within its limits)."""
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._admission = admission
        self._tokens = tokens
        self._tenant_scope = tenant_scope
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
        held = _held(self._admission, scope)
        try:
            async with AsyncExitStack() as tenant_call:  # left before the answer's first byte
                try:
                    declared, tenant = self._check_head(scope)
                    await self._enter_tenant_scope(tenant_call, tenant, scope)
                    held.grow(declared)
                    body = await self._read_body(receive, held, declared is None)
                    held.parsed(body)
                except _Refused as refused:
                    await tenant_call.aclose()
                    await _answer(send, refused.status, refused.message, refused.headers)
                    return
                prepaid = PREPAID_BYTES.set(held.nbytes)
                try:
                    await self._app(_with_length(scope, len(body)), body, _counted(send, held, tenant_call.aclose))
                finally:
                    PREPAID_BYTES.reset(prepaid)
        finally:
            held.release()

    async def _enter_tenant_scope(self, stack: AsyncExitStack, tenant: Tenant, scope: Scope) -> None:
        """Run the rest of the call as `tenant`'s; refused beyond the tenant's limits (429) or when they
        cannot be checked (503), with Retry-After, before the body is read."""
        try:
            await stack.enter_async_context(self._tenant_scope(tenant, _timeout_s(scope)))
        except ServingError as error:
            retry_after_s = getattr(error, "retry_after_s", RETRY_AFTER_S)
            raise _Refused(error.http_status, error.message, {b"retry-after": str(retry_after_s).encode()}) from None

    def _check_head(self, scope: Scope) -> tuple[int | None, Tenant]:
        """The body's declared length (None without Content-Length) and the caller's tenant, once the head
        passed every check."""
        if scope["http_version"] not in ("1.0", "1.1"):
            raise _Refused(400, f"HTTP/{scope['http_version']} is not served on this port: use HTTP/1.1")
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
        authorization = next((value for name, value in scope["headers"] if name.lower() == b"authorization"), None)
        tenant = rest_caller(
            self._tokens, scope["path"], None if authorization is None else authorization.decode("latin-1")
        )
        if tenant is None:
            raise _Refused(401, TOKEN_REFUSED, {b"www-authenticate": b'Bearer realm="ovms"'})
        return None if declared is None else int(declared), tenant

    async def _read_body(self, receive: Receive, held: _Held, count_parts: bool) -> bytes:
        """The body, once the client has sent all of it; with `count_parts` (no Content-Length reserved
        it), each part is reserved in `held` as it arrives."""
        body = bytearray()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            too_slow_at = started + BODY_GRACE_S + len(body) / MIN_BODY_BYTES_PER_S
            wait_s = min(self._body_idle_timeout_s, too_slow_at - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait_s, 0.0))
            except TimeoutError:
                too_slow = wait_s < self._body_idle_timeout_s
                raise _Refused(408, _body_timeout_message(too_slow, self._body_idle_timeout_s)) from None
            if message["type"] == "http.disconnect":
                raise _Refused(400, "Request body incomplete: the client closed the connection")
            data = message.get("body", b"")
            if len(body) + len(data) > self._max_body_bytes:
                raise _Refused(413, body_too_large_message(self._max_body_bytes))
            if count_parts:
                held.grow(len(data))
            body += data
            if not message.get("more_body", False):
                return bytes(body)


def _timeout_s(scope: Scope) -> float | None:
    """The call's own deadline in seconds (X-Request-Timeout), if it has a valid one (else the app says 400)."""
    text = next((value for name, value in scope["headers"] if name.lower() == TIMEOUT_HEADER_BYTES), None)
    try:
        seconds = float(text) if text is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds <= MAX_TIMEOUT_S else None


def _body_timeout_message(too_slow: bool, idle_timeout_s: float) -> str:
    if too_slow:
        return (
            f"Request body timeout: slower than {MIN_BODY_BYTES_PER_S >> 10} KiB/s on average after {BODY_GRACE_S:g} s"
        )
    return f"Request body timeout: nothing arrived for {idle_timeout_s:g} s"


def _counted(send: Send, held: _Held, answering: Callable[[], Awaitable[Any]]) -> Send:
    """`send`, with each part of the answer covered by the request's reservation while it is written, and
    `answering()` awaited before the answer's first byte (the call's tenant scope left: its lease is gone
    before the client can see the answer)."""

    async def send_counted(message: Message) -> None:
        if message["type"] == "http.response.start":
            await answering()
        if message["type"] == "http.response.body":
            held.cover(len(message.get("body", b"")))
        await send(message)

    return send_counted


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


async def _answer(send: Send, status: int, message: str, extra_headers: dict[bytes, bytes]) -> None:
    """A JSON error, like the app's, and the connection closed: its framing cannot be trusted (or its
    body was not read)."""
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra_headers.items(),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
