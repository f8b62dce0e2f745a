"""ovms.healthcheck reads the server's flags from PID 1's command line, however the container started it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovms.healthcheck import main, server_arguments


def cmdline(*words: str) -> bytes:
    """As /proc/<pid>/cmdline holds it: each word NUL-terminated."""
    return b"".join(word.encode() + b"\0" for word in words)


@pytest.mark.parametrize(
    ("words", "flags"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/ovms", "--port", "9178"], ["--port", "9178"]),
        (["ovms", "worker", "--config_path", "/m/config.json"], ["worker", "--config_path", "/m/config.json"]),
        (["python3", "-m", "ovms", "api", "--rest_port", "8000"], ["api", "--rest_port", "8000"]),
        (["/usr/local/bin/ovms"], []),
        # a worker's process once Celery retitled it (with setproctitle installed): one word, no NULs inside
        (
            ["[celeryd: CPU-vm-1-3fa9c1@vm:MainProcess] -active- (worker --config_path /m/config.json --device CPU)"],
            ["worker", "--config_path", "/m/config.json", "--device", "CPU"],
        ),
    ],
    ids=["venv-script", "entrypoint", "python-m", "no-flags", "celery-title"],
)
def test_server_arguments_are_the_words_after_ovms(words: list[str], flags: list[str]) -> None:
    assert server_arguments(cmdline(*words)) == flags


@pytest.mark.parametrize(
    "words",
    [
        ["redis-server", "*:6379"],
        ["python", "-m"],
        ["python", "-m", "ovms_tools"],
        ["python", "/srv/ovms/run.py"],
        [],
        ["[celeryd: CPU-vm-1-3fa9c1@vm:MainProcess] -active- (worker --config_path /m/config.json --dev"],  # cut
    ],
    ids=["other-program", "dangling-m", "other-module", "ovms-folder", "empty", "celery-title-cut-short"],
)
def test_other_command_lines_are_refused(words: list[str]) -> None:
    with pytest.raises(ValueError, match="not an ovms command line"):
        server_arguments(cmdline(*words))


def test_main_reports_unhealthy_for_a_command_line_of_another_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cmdline"
    path.write_bytes(cmdline("redis-server", "*:6379"))
    assert main(str(path)) == 1
    assert capsys.readouterr().out.startswith("unhealthy: ValueError: not an ovms command line")
