"""api.rest_http.parse_json: msgspec's speed, Python json's meaning (what TF Serving clients send)."""

from __future__ import annotations

import json
import math

import pytest

from api.rest_http import parse_json
from inference.errors import InvalidArgument

# Bodies msgspec reads the same as Python's json, and bodies it refuses that Python's json reads.
BODIES = [
    b'{"instances": [[1.5, -2, 0.1, 5e-324, 2.2250738585072014e-308]]}',
    b'{"a": 1, "a": 2}',
    b'[18446744073709551616, -9223372036854775809]',  # beyond 64 bits: Python ints, never floats
    b'[NaN, Infinity, -Infinity]',
    b"[1e400, -1e400]",
    b'["\\ud800"]',
    b"\xef\xbb\xbf[1]",
    '["é", {"b64": "AAAA"}]'.encode("utf-16"),
]


@pytest.mark.parametrize("body", BODIES)
def test_values_are_those_python_json_reads(body: bytes) -> None:
    expected = json.loads(body)
    parsed = parse_json(body)
    assert repr(parsed) == repr(expected)  # repr: NaN equals nothing, and ints must stay ints
    assert [type(v) for v in _leaves(parsed)] == [type(v) for v in _leaves(expected)]


@pytest.mark.parametrize("body", [b"[1,]", b"[01]", b"{bad", b"[" * 100_000, b"  "])
def test_malformed_bodies_are_refused_as_python_json_words_it(body: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)) as python:
        json.loads(body)
    with pytest.raises(InvalidArgument) as ours:
        parse_json(body)
    assert ours.value.message == f"Invalid JSON: {python.value}"


def test_an_empty_body_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="empty request body"):
        parse_json(b"")


def test_nan_reaches_the_array() -> None:
    assert math.isnan(parse_json(b"[NaN]")[0])


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
