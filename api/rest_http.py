"""What the REST blueprints share: JSON answers, a JSON body, and the metrics
decorator (the REST side of api.grpc_servicer.serving_errors: both record through ServingMetrics.track)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from flask import Response, request

from api.metrics import ServingMetrics
from inference.errors import InvalidArgument

ModelView = Callable[..., Response]


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(document), status=status, mimetype="application/json", headers=headers)


def json_body() -> Any:
    """The request's body as JSON (read once, not cached: a large body is not kept twice)."""
    raw = request.get_data(cache=False)
    if not raw:
        raise InvalidArgument("Invalid JSON: empty request body")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"Invalid JSON: {exc}") from None


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
