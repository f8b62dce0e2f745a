"""The seed's shape and batch-size settings: `auto`, "(1,3,224,224)", or per-input JSON maps."""

from __future__ import annotations

import re

from inference.per_input import parse_per_input

AUTO = "auto"
Shape = tuple[int, ...]
# One input's setting: AUTO or a fixed shape.
InputShape = str | Shape
# A model's setting: input name -> InputShape; the key None applies to every input.
ShapeSetting = dict[str | None, InputShape]

_SHAPE_TEXT = re.compile(r"^\s*[\(\[]\s*(-?\d+\s*(,\s*-?\d+\s*)*)?[\)\]]\s*$")


class ShapeParseError(ValueError):
    pass


def parse_input_shape(value: object) -> InputShape:
    """Parse "auto", "(1,3,224,224)", "[1,3,224,224]" or a list of ints."""
    if isinstance(value, str) and value.strip() == AUTO:
        return AUTO
    if isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        return tuple(value)
    if isinstance(value, str) and _SHAPE_TEXT.match(value):
        inner = value.strip()[1:-1].strip()
        return tuple(int(d) for d in inner.split(",")) if inner else ()
    raise ShapeParseError(f"invalid shape: {value!r}")


def parse_shape_setting(value: object) -> ShapeSetting:
    """Parse a model's `shape` from the CLI (a string) or config.json (string, list or object)."""
    return parse_per_input(value, parse_input_shape, ShapeParseError, "shape")


def parse_batch_size(value: object) -> int | str | None:
    """`auto`, a positive integer, or 0 / None for the model's own batch size."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip() == AUTO:
        return AUTO
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ShapeParseError(f"invalid batch_size: {value!r}") from None
    if number < 0:
        raise ShapeParseError(f"invalid batch_size: {value!r}")
    return number or None
