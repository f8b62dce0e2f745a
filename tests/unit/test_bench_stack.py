"""ops/bench_stack.py: how a benchmark's measurements against a started server end when interrupted or failing,
and ops/bench_report.py's header of a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench_report import RunStart
from bench_stack import INTERRUPTED_EXIT_STATUS, ServerProcess, exit_on_interrupt, measuring


class Sleeper(ServerProcess):
    """A process that prints a line and sleeps: a server as far as ServerProcess is concerned."""

    name = "sleeper"

    def __init__(self, directory: Path) -> None:
        self.log_path = directory / "sleeper.log"
        self.env = {}
        self.command = [sys.executable, "-c", "import time; print('sleeper up', flush=True); time.sleep(60)"]

    def wait_ready(self) -> None:
        pass


def test_an_interrupt_stops_the_server_then_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = Sleeper(tmp_path)
    with pytest.raises(SystemExit) as exit_, measuring(server):
        raise KeyboardInterrupt
    assert exit_.value.code == INTERRUPTED_EXIT_STATUS == 130
    assert server.process is not None and server.process.poll() is not None
    assert capsys.readouterr().err.endswith("interrupted; the server was stopped\n")


def test_a_failure_shows_the_server_log_and_propagates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = Sleeper(tmp_path)
    with pytest.raises(RuntimeError, match="measurement failed"), measuring(server):
        assert server.process is not None and server.process.poll() is None
        raise RuntimeError("measurement failed")
    assert server.process.poll() is not None
    assert "failed; last lines of the server log:\n" in capsys.readouterr().err


def test_exit_on_interrupt_names_what_was_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_, exit_on_interrupt("the servers were stopped"):
        raise KeyboardInterrupt
    assert exit_.value.code == 130
    assert capsys.readouterr().err.endswith("interrupted; the servers were stopped\n")


def test_exit_on_interrupt_lets_other_errors_through() -> None:
    with pytest.raises(ValueError), exit_on_interrupt("the server was stopped"):
        raise ValueError


def test_run_header_gives_date_machine_and_load_before_and_after() -> None:
    lines = RunStart.now().header_items().splitlines()
    assert [line.split(":")[0] for line in lines] == ["- date", "- machine", "- load average (1 min)"]
    assert lines[2].endswith(" after") and " before the run, " in lines[2]
