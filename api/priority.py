"""The priority a request asks for, as the frontends carry it: the `OVMS-Priority` REST header and the
`ovms-priority` gRPC metadata (both APIs), and KServe v2's `priority` request parameter (which wins over them),
as Triton reads it: an integer level, 1 the highest, 0 or none the model's default (inference.priorities)."""

from __future__ import annotations

import re
from typing import Any

from inference.errors import InvalidArgument

PRIORITY_HEADER = "OVMS-Priority"
PRIORITY_METADATA = PRIORITY_HEADER.lower()  # gRPC metadata keys are lower case
PRIORITY_PARAMETER = "priority"
# One sign at most, ASCII digits (a uint64 has at most 20: longer text is no level, and Python's int() of it costs).
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")


def priority_text(text: str | None, where: str) -> int:
    """The level in a header or metadata value (0 without one); INVALID_ARGUMENT if it is not an integer. Its
    range is checked with the model's default (inference.priorities.priority_level)."""
    if text is None:
        return 0
    value = text.strip()
    if not _INTEGER.fullmatch(value):
        raise InvalidArgument(f"Invalid {where}: {text[:40]!r} is not an integer priority level")
    return int(value)


def priority_parameter(value: Any) -> int | None:
    """A v2 request's `priority` parameter: an integer, or None without one (then the header or metadata
    says)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"Invalid '{PRIORITY_PARAMETER}' parameter: an integer priority level")
    return value
