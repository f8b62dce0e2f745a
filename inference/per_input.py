"""Per-model settings that are one value for every input or an object of values by input name (`shape`,
`layout`): config.json gives the object as JSON, the command line as JSON text."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def parse_per_input(
    value: object, parse_one: Callable[[object], T], error: type[ValueError], what: str
) -> dict[str | None, T]:
    """Input name -> parse_one(its value); the key None applies to every input. `error` is raised, naming
    `what`, for JSON text that does not parse (parse_one raises its own)."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise error(f"invalid {what} JSON: {exc}") from None
    if isinstance(value, dict):
        return {str(name): parse_one(one) for name, one in value.items()}
    return {None: parse_one(value)}
