"""Request fields both v2 frontends read the same way: the model version string, the request id, the
parameters (their number, the `timeout` parameter in microseconds as Triton reads it, and the extensions'
tensor parameters this server does not serve), and how many tensors a request names."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from api.versions import parse_version
from inference.errors import InvalidArgument

TIMEOUT_PARAMETER = "timeout"
MAX_TIMEOUT_US = 10**12  # 1e6 s: a longer deadline overflows the Redis expiry of the request's tensors
MAX_ID_CHARS = 1024  # the id is echoed in the answer: far above a UUID or a trace id
# At most this many inputs or requested outputs in a request: no model has nearly as many, and each costs a
# decode and a line in an error message.
MAX_TENSORS = 1024
MAX_PARAMETERS = 64  # per request, input or output: none is needed beyond `timeout`; each costs a decode
# Tensor parameters of protocol extensions this server does not serve, and why: refused rather than ignored,
# since ignoring them would answer something else than was asked.
UNSERVED_TENSOR_PARAMETERS = {
    "shared_memory_region": "shared memory is not supported by this server: send the tensor in the request",
    "shared_memory_byte_size": "shared memory is not supported by this server: send the tensor in the request",
    "shared_memory_offset": "shared memory is not supported by this server: send the tensor in the request",
    "classification": "the classification extension is not supported by this server: ask for the whole output",
}


def model_version(text: str | None) -> int | None:
    """No version and "" are the default version."""
    return parse_version(text)


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


def request_id(value: Any) -> str:
    """The request's id as the answer repeats it ("" when it has none): a string of at most MAX_ID_CHARS."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument("Unable to parse 'id': a string")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"Invalid 'id': {len(value)} characters; the limit is {MAX_ID_CHARS}")
    return value


def check_tensor_count(count: int, kind: str) -> None:
    """`kind`: "inputs" or "outputs"."""
    if count > MAX_TENSORS:
        raise InvalidArgument(f"Invalid number of {kind} - {count} exceed the limit of {MAX_TENSORS}")


def check_parameter_count(count: int, where: str) -> None:
    """`where`: what carries the parameters, as a message names it ("the request", "input x")."""
    if count > MAX_PARAMETERS:
        raise InvalidArgument(f"Too many parameters in {where:.140}: {count}, at most {MAX_PARAMETERS}")


def check_tensor_parameters(names: Iterable[str], where: str) -> None:
    """Refuse the parameters of extensions this server does not serve ("input x", "output y")."""
    for name in names:
        reason = UNSERVED_TENSOR_PARAMETERS.get(name)
        if reason is not None:
            raise InvalidArgument(f"Invalid parameter '{name}' of {where:.140}: {reason}")
