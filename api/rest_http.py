"""What the REST blueprints share: JSON answers, a JSON or raw body, the deadline and served-by headers, and the metrics
decorator (the REST side of api.grpc_servicer.serving_errors: both record through ServingMetrics.track)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import msgspec
from flask import Response, request

from api.metrics import ServingMetrics
from api.priority import PRIORITY_HEADER, priority_text
from inference.errors import InvalidArgument
from inference.request import InferenceResult

ModelView = Callable[..., Response]

TIMEOUT_HEADER = "X-Request-Timeout"  # seconds; REST clients' counterpart of a gRPC deadline
MAX_TIMEOUT_S = 1e6  # larger (or infinite) deadlines overflow the Redis expiry of the request's tensors
WORKER_HEADER = "X-Ovms-Worker"
BATCH_HEADER = "X-Ovms-Batch-Size"  # rows of the inference that served the request (dynamic batching)
_JSON = msgspec.json.Decoder()


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status=status, mimetype="application/json", headers=headers)


def json_body() -> Any:
    """The request's body as JSON (read once, not cached: a large body is not kept twice)."""
    return parse_json(request.get_data(cache=False))


def parse_json(raw: bytes) -> Any:
    """JSON text as Python values; INVALID_ARGUMENT for anything else (also for nesting too deep to parse).

    msgspec reads a 224x224x3 image of JSON numbers in a fifth of the time Python's json takes (10 against
    52 ms) and gives the same values, but refuses some of what Python's json reads and TF Serving clients
    send (the NaN and Infinity literals, numbers beyond a double's range, a byte-order mark, lone
    surrogates). A body msgspec refuses is read again by Python's json, which decides, and words the error
    as before."""
    if not raw:
        raise InvalidArgument("Invalid JSON: empty request body")
    try:
        return _JSON.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"Invalid JSON: {exc}") from None


def raw_body() -> bytes:
    """The request's body as the server received it, without a copy: the app is only ever called with the
    whole body in its wsgi.input (api.wsgi_bridge), and reading all of an io.BytesIO at once returns the
    bytes it was made from (Flask's get_data copies it, in parts)."""
    return request.environ["wsgi.input"].read()


def header_timeout_s() -> float | None:
    """The request's X-Request-Timeout, if it has one."""
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise InvalidArgument(f"Invalid {TIMEOUT_HEADER} header: {text}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"Invalid {TIMEOUT_HEADER} header: {text}")
    return seconds


def header_priority() -> int:
    """The priority level in the request's OVMS-Priority header (0 without one: the model's default)."""
    return priority_text(request.headers.get(PRIORITY_HEADER), f"{PRIORITY_HEADER} header")


def served_by(result: InferenceResult) -> dict[str, str]:
    """The headers of a predict's answer that say which worker served it, in an inference of how many rows."""
    return {WORKER_HEADER: result.worker, BATCH_HEADER: str(result.batch_size)}


def tracked(metrics: ServingMetrics, method: str, interface: str = "rest") -> Callable[[ModelView], ModelView]:
    """Count and time a model route under `method` (the gRPC method's name, so that both interfaces
    share the series); the view gets the tracker first and reports to it what it served. A route without
    a model name (one about every model) counts under name ""."""

    def decorate(view: ModelView) -> ModelView:
        @functools.wraps(view)
        def counted(name: str | None = None, version: str | None = None) -> Response:
            with metrics.track(interface, method, name or "") as tracker:
                return view(tracker, name, version)

        return counted

    return decorate


def without_redis(view: Callable[..., Response]) -> Callable[..., Response]:
    """Mark a route that answers while Redis is unreachable (every other one is refused at once: 503)."""
    view.without_redis = True  # type: ignore[attr-defined]
    return view


def needs_redis(view: Callable[..., Response] | None) -> bool:
    return not getattr(view, "without_redis", False)
