"""A model version as clients write it (REST URLs and bodies, KServe v2 `model_version` strings)."""

from __future__ import annotations

import re

from inference.errors import InvalidArgument

_VERSION = re.compile(r"[0-9]{1,19}")
MAX_VERSION = 2**63 - 1  # ModelSpec.version is an Int64Value


def parse_version(text: str | None) -> int | None:
    """ASCII digits that fit gRPC's int64 (str.isdigit() would also take "²", which int() refuses); None,
    "" (KServe v2) and 0 (as ovmsclient sends it) mean the default version."""
    if not text:
        return None
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise InvalidArgument(f"Invalid version: {text:.40}")
    return int(text) or None
