"""The codec under tasks.messages: frozen dataclasses to and from JSON-able (or msgpack-able) values.

A record is a dict with one key per field (field metadata `wire` names a key that differs from the
attribute), or with `AS_ARRAY` a list in field order. Reading checks every value against the field's
type (int, float, str, bool, bytes, StrEnum, `X | None`, list, tuple, dict, nested records, a union of
records told apart by their required keys, and the few inference types in `_CUSTOM`) and fills a missing
key with the field's default; a missing key without one, a value of the wrong type or an unknown enum
value raises `Malformed`. Keys a reader does not know are ignored, so a field added with a default needs
no new format. A `Message` (a top-level record, alone in a Redis value or Celery argument) also carries
"format": `FORMAT`; one without it is format 1, the layout from before the field existed, and one of a
format this process does not read is refused, as is any malformed one (InvalidArgument).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self

from inference.errors import InvalidArgument, ServingError
from inference.signature import ModelSignature

FORMAT = 1  # the layout this code writes; it reads it and nothing newer
MAX_REASON_CHARS = 200  # of a malformed record's reason in its error: logs and answers stay small

Reader = Callable[[Any], Any]
Writer = Callable[[Any], Any] | None  # None: the value is written as it is


class Malformed(ValueError):
    """A value that does not have its field's type."""


def key(name: str, omit_none: bool = False) -> dict[str, Any]:
    """Field metadata: the field's wire key is `name`; `omit_none`: no key at all while the value is None
    (for keys that older readers test for presence)."""
    return {"wire": name, "omit_none": omit_none}


class Record:
    """Base of the wire types: `to_wire()` and `from_wire()` derived from the dataclass's fields."""

    __slots__ = ()
    AS_ARRAY: ClassVar[bool] = False

    def to_wire(self) -> Any:
        return _plan(type(self)).encode(self)

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        """Raises Malformed (a ValueError), KeyError or TypeError for a value that is not one."""
        return _plan(cls).decode(data)


class Message(Record):
    """A top-level record: it carries its format, and a malformed one is InvalidArgument."""

    __slots__ = ()
    WHAT: ClassVar[str] = "message"  # how errors name it

    def to_wire(self) -> dict[str, Any]:
        return {"format": FORMAT, **super().to_wire()}

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        try:
            if not isinstance(data, dict):
                raise Malformed(f"expected an object, got {type(data).__name__}")
            version = data.get("format", 1)
            if version != FORMAT:
                raise Malformed(f"format {version!r} is not {FORMAT}, the one this process reads")
            return super().from_wire(data)
        except (Malformed, KeyError, IndexError, TypeError, ValueError, RecursionError) as exc:
            raise cls.malformed(exc) from None

    def to_json(self) -> str:
        return json.dumps(self.to_wire())

    @classmethod
    def from_json(cls, raw: str | bytes) -> Self:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
            raise cls.malformed(exc) from None
        return cls.from_wire(data)

    @classmethod
    def malformed(cls, reason: Exception) -> InvalidArgument:
        """The error for a malformed record; its reason cut short, as it may quote a value of any size."""
        text = str(reason)
        if len(text) > MAX_REASON_CHARS:
            text = text[:MAX_REASON_CHARS] + "…"
        return InvalidArgument(f"Malformed {cls.WHAT}: {text}")


_ABSENT = object()
_SCALARS = (int, float, str, bool, bytes)


class _Plan:
    """How one record class is written and read, worked out once from its type hints."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        self.cls = cls
        self.as_array = cls.AS_ARRAY
        fields = dataclasses.fields(cls)
        if any(field.default_factory is not dataclasses.MISSING for field in fields):
            raise TypeError(f"{cls.__name__}: wire records take plain (immutable) defaults")
        # (attribute, key, writer or None for as it is, no key while None)
        self.writes = [
            (field.name, field.metadata.get("wire", field.name), _writer(hints[field.name]), _omits_none(field))
            for field in fields
        ]
        # (key, the type a value passes as it is (None: always read), reader, default or _ABSENT), in the
        # order of the class's __init__. The type test spares most values a call (this is per message).
        self.reads = [
            (
                field.metadata.get("wire", field.name),
                hints[field.name] if hints[field.name] in _SCALARS else None,
                _reader(hints[field.name]),
                _default(field),
            )
            for field in fields
        ]
        self.required_keys = frozenset(key for key, _, _, default in self.reads if default is _ABSENT)

    def encode(self, record: Any) -> Any:
        if self.as_array:
            values = [getattr(record, name) for name, _, _, _ in self.writes]
            return [v if w is None or v is None else w(v) for v, (_, _, w, _) in zip(values, self.writes, strict=True)]
        wire = {}
        for name, key, write, omit_none in self.writes:
            value = getattr(record, name)
            if value is None:
                if not omit_none:
                    wire[key] = None
            else:
                wire[key] = value if write is None else write(value)
        return wire

    def decode(self, data: Any) -> Any:
        if self.as_array:
            if not len(self.required_keys) <= len(_sequence(data)) <= len(self.reads):
                raise Malformed(f"expected {len(self.reads)} items, got {len(data)}")
            return self.cls(
                *[
                    value if type(value) is kind else read(value)
                    for (_, kind, read, _), value in zip(self.reads, data, strict=False)
                ]
            )
        if type(data) is not dict:
            raise Malformed(f"expected an object, got {type(data).__name__}")
        values = []
        for key, kind, read, default in self.reads:
            value = data.get(key, _ABSENT)
            if type(value) is kind:
                values.append(value)
            elif value is not _ABSENT:
                values.append(read(value))
            elif default is not _ABSENT:
                values.append(default)
            else:
                raise KeyError(key)
        return self.cls(*values)


def _written(write: Writer, value: Any) -> Any:
    return value if write is None or value is None else write(value)


def _omits_none(field: dataclasses.Field) -> bool:
    return field.metadata.get("omit_none", False)


def _default(field: dataclasses.Field) -> Any:
    return _ABSENT if field.default is dataclasses.MISSING else field.default


@functools.cache
def _plan(cls: type) -> _Plan:
    return _Plan(cls)


def _sequence(value: Any) -> list | tuple:
    if not isinstance(value, list | tuple):
        raise Malformed(f"expected an array, got {type(value).__name__}")
    return value


def _scalar(kind: type) -> Reader:
    def read(value: Any) -> Any:
        if type(value) is kind or (kind is float and type(value) is int):
            return value
        raise Malformed(f"expected {kind.__name__}, got {type(value).__name__}")

    return read


def _signature(value: Any) -> ModelSignature:
    if not isinstance(value, dict):
        raise Malformed(f"expected a signature, got {type(value).__name__}")
    return ModelSignature.from_dict(value)


def _error(value: Any) -> ServingError:
    kind, message = _sequence(value)
    if not isinstance(kind, str) or not isinstance(message, str):
        raise Malformed("expected an error [kind, message]")
    return ServingError.from_wire([kind, message])


# Inference types that are not records: their own dict/list forms.
_CUSTOM: dict[type, tuple[Reader, Writer]] = {
    ModelSignature: (_signature, ModelSignature.to_dict),
    ServingError: (_error, ServingError.to_wire),
}


def _reader(kind: Any) -> Reader:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not types.NoneType]
        read = _reader(options[0]) if len(options) == 1 else _one_of(options)
        if len(options) == len(args):
            return read
        return lambda value: None if value is None else read(value)
    if origin in (list, tuple):
        read, kind = _reader(args[0]), args[0] if args[0] in _SCALARS else None
        return lambda value: origin([item if type(item) is kind else read(item) for item in _sequence(value)])
    if origin is dict:
        read_key, read_value = (_int_key if args[0] is int else _scalar(str)), _reader(args[1])
        return lambda value: {read_key(k): read_value(v) for k, v in _mapping(value).items()}
    if kind is Any:
        return lambda value: value
    if kind in _CUSTOM:
        return _CUSTOM[kind][0]
    if isinstance(kind, type) and issubclass(kind, Record):
        return _record_reader(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return kind
    if kind in (int, float, str, bool, bytes):
        return _scalar(kind)
    raise TypeError(f"no wire reader for {kind!r}")


def _writer(kind: Any) -> Writer:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not types.NoneType]
        return _writer(options[0]) if len(options) == 1 else _to_wire
    if origin in (list, tuple):
        write = _writer(args[0])
        return list if write is None else (lambda value: [_written(write, item) for item in value])
    if origin is dict:
        write = _writer(args[1])
        return lambda value: {str(k): _written(write, v) for k, v in value.items()}
    if kind in _CUSTOM:
        return _CUSTOM[kind][1]
    if isinstance(kind, type) and issubclass(kind, Record):
        return _record_writer(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return lambda value: value.value
    return None


def _record_reader(kind: type[Record]) -> Reader:
    """A plain record's reader goes straight to its plan (found at first use: records may refer to
    records defined after them); a Message (format check) or one with its own from_wire, through that."""
    if issubclass(kind, Message) or kind.from_wire.__func__ is not Record.from_wire.__func__:  # type: ignore[attr-defined]
        return kind.from_wire
    return lambda value: _plan(kind).decode(value)


def _record_writer(kind: type[Record]) -> Writer:
    if issubclass(kind, Message) or kind.to_wire is not Record.to_wire:
        return kind.to_wire
    return lambda value: _plan(kind).encode(value)


def _to_wire(record: Record) -> Any:
    return record.to_wire()


def _one_of(options: list[type]) -> Reader:
    """A union of records: the first whose required keys are all present (the last one otherwise)."""

    def read(value: Any) -> Any:
        keys = _mapping(value).keys()
        chosen = next((o for o in options if _plan(o).required_keys <= keys), options[-1])
        return chosen.from_wire(value)

    return read


def _mapping(value: Any) -> dict:
    if not isinstance(value, dict):
        raise Malformed(f"expected an object, got {type(value).__name__}")
    return value


def _int_key(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    raise Malformed(f"expected an integer key, got {value!r:.40}")
