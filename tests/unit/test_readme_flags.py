"""The README's flag table against the declared options (see inference.options): every flag has its row
with the declared default and environment variable, and every row names a flag that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference.options import Declared
from ovms.settings import MODEL_OPTIONS, SERVER_OPTIONS

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_HEAD = "| flag | default | meaning |\n|---|---|---|\n"
DECLARED = (*SERVER_OPTIONS, *MODEL_OPTIONS)


def readme_defaults() -> dict[str, str]:
    """Flag name -> its default cell, backticks removed."""
    text = README.read_text(encoding="utf-8")
    assert text.count(TABLE_HEAD) == 1, "the README has one flag table"
    table = text.split(TABLE_HEAD, 1)[1].split("\n\n", 1)[0]
    defaults = {}
    for row in table.splitlines():
        flags, default = row.split("|")[1:3]
        for flag in re.findall(r"`--(\w+)`", flags):
            defaults[flag] = default.replace("`", "").strip()
    return defaults


def expected_default(declared: Declared) -> str:
    shown = declared.shown_default()
    return f"env {declared.option.env}; else {shown}" if declared.option.env else shown


@pytest.mark.parametrize("declared", DECLARED, ids=lambda declared: declared.flag)
def test_every_flag_has_a_readme_row_with_its_declared_default(declared: Declared) -> None:
    defaults = readme_defaults()
    assert declared.flag in defaults, f"README.md's flag table has no row for --{declared.flag}"
    assert defaults[declared.flag] == expected_default(declared)


def test_every_readme_row_is_a_declared_flag() -> None:
    assert set(readme_defaults()) == {declared.flag for declared in DECLARED}
