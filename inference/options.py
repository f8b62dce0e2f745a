"""Options declared once: a dataclass field that carries its command-line flag's default, help text,
environment variable and check.

Each layer declares the settings it reads as such fields (inference.model_config, tasks.settings,
api.settings); `ovms.settings` composes them and builds the `ovms` parser from the fields, and
tests/unit/test_readme_flags.py checks the README's flag table against them. This module knows no
flag: it only says how one is declared.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from typing import Any

Check = Callable[[str, Any], None]  # (flag name, given value); raises ValueError(message) when it is wrong


@dataclass(frozen=True)
class Option:
    help: str
    type: Callable[[str], Any] | None = str  # how argparse reads the text; None: a switch (no value)
    env: str | None = None  # the environment variable read when the flag is not given
    check: Check | None = None  # of a given value
    convert: Callable[[str, Any], Any] | None = None  # (flag, text) -> value, after the check; ValueError if bad
    default_text: str | None = None  # how --help and the README show a default the code computes
    flag: str | None = None  # the flag's name, when it is not the field's


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, **details: Any) -> Any:
    """A dataclass field declaring a command-line option (see Option for `details`)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={Option: Option(help, **details)}
    )


@dataclass(frozen=True)
class Declared:
    """One declared option of a settings class: its field, flag and default."""

    field: str
    flag: str
    option: Option
    default: Any

    def shown_default(self) -> str:
        """The default as --help and the README show it; '—' for none."""
        if self.option.default_text is not None:
            return self.option.default_text
        return show_value(self.default)


def declared_options(settings_class: type) -> Iterator[Declared]:
    """The options a (settings) dataclass declares, in field order."""
    for field in dataclasses.fields(settings_class):
        option_ = field.metadata.get(Option)
        if option_ is not None:
            default = field.default if field.default_factory is MISSING else field.default_factory()
            yield Declared(field.name, option_.flag or field.name, option_, None if default is MISSING else default)


def show_value(value: Any) -> str:
    if value is None or value == {} or value == "":
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


# --------------------------------------------------------------------------- checks of a given value


def positive(flag: str, value: float) -> None:
    if value < 1:
        raise ValueError(f"{flag} must be a positive number")


def not_negative(flag: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{flag} must not be negative")


def port_number(flag: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{flag} number out of range from 0 to 65535")


def from_to(low: int, high: int, why: str = "") -> Check:
    """A whole number from `low` to `high`; `why` follows the message, e.g. ' (a limit of gRPC)'."""

    def check(flag: str, value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"{flag} must be from {low} to {high}{why}")

    return check


def json_value(flag: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
