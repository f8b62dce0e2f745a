"""Request fields both v2 frontends read the same way: the model version string, the request id and the
`timeout` parameter (microseconds, as Triton reads it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from api.versions import parse_version
from inference.errors import InvalidArgument

TIMEOUT_PARAMETER = "timeout"
MAX_TIMEOUT_US = 10**12  # 1e6 s: a longer deadline overflows the Redis expiry of the request's tensors
MAX_REQUEST_ID_CHARS = 1024  # far beyond a UUID or a trace id; the answer repeats it


def model_version(text: str | None) -> int | None:
    """No version and "" are the default version."""
    return parse_version(text)


def request_id(value: Any) -> str:
    """The request's `id` as the answer repeats it ("" when it has none)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument("Unable to parse 'id': a string")
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(f"Invalid 'id': {len(value)} characters; the limit is {MAX_REQUEST_ID_CHARS}")
    return value


def timeout_s(parameters: Mapping[str, Any]) -> float | None:
    """The request's `timeout` parameter in seconds, None without one; 0 means none, as in Triton."""
    value = parameters.get(TIMEOUT_PARAMETER)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"Invalid '{TIMEOUT_PARAMETER}' parameter: microseconds as an integer")
    if not 0 <= value <= MAX_TIMEOUT_US:
        raise InvalidArgument(f"Invalid '{TIMEOUT_PARAMETER}' parameter: {value} is outside 0..{MAX_TIMEOUT_US} µs")
    return value / 1e6 if value else None
