"""`docker run --read-only` (no writable temporary directory) with the embedded Redis: the server says what
it needs in one line and exits 1, instead of a traceback from tempfile."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

from ovms.all_in_one import Supervisor
from ovms.settings import parse_command_line


def test_no_writable_temporary_directory_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, models_dir: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # what a read-only root file system leaves
    argv = ["--model_name", "digits", "--model_path", str(models_dir / "digits"), "--port", "0"]
    with caplog.at_level(logging.ERROR, logger="serving"):
        assert Supervisor(parse_command_line(argv), argv).run() == 1
    assert [record.getMessage().split(":")[0] for record in caplog.records] == [
        "embedded Redis needs a writable temporary directory ($TMPDIR or /tmp; with a read-only root file system, "
        "mount a tmpfs there, or give --broker_url)"
    ]
