"""CPU time of processes over a measured window, from /proc (Linux): what each part of a server costs per request.

Standard library only: ops/v2_load.py-style clients in other virtualenvs may import it too.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, utime + stime in seconds) from the text of /proc/<pid>/stat. The command name in parentheses
    may hold spaces and parentheses itself, so the fields are counted after its last ')'; utime and stime cover
    every thread of the process."""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 of proc(5) (state): ppid is field 4, utime 14, stime 15
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, or None once it is gone."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())[1]
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """The pids of all live processes below `pid`."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            children.setdefault(parse_stat(stat.read_text())[0], []).append(int(stat.parent.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = children.get(pending.pop(), [])
        found += kids
        pending += kids
    return found


def command_line(pid: int) -> list[str]:
    """argv of a process; a process that rewrote its title (redis-server, the children of an all-in-one `ovms`
    named by ovms.titled) shows it as one space-separated string, maybe followed by leftovers."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    return args[0].split() + args[1:] if len(args) == 1 or " " in args[0] else args


def ovms_role(args: list[str]) -> str | None:
    """The part of an ovms stack a process plays, by its command line: "Redis" for the embedded redis-server
    (titled `ovms redis …`), "worker" for `ovms worker` / `python -m ovms worker`, "api" for `ovms api`, None
    for anything else."""
    if args and Path(args[0]).name.startswith("redis-server"):
        return "Redis"
    for index, arg in enumerate(args):
        if arg == "ovms" or Path(arg).name == "ovms":
            role = args[index + 1] if index + 1 < len(args) else ""
            return {"worker": "worker", "api": "api", "redis": "Redis"}.get(role)
    return None


def ovms_roles(root: int) -> dict[int, str]:
    """pid -> role for an all-in-one `python -m ovms` and its children; the root itself runs the api."""
    roles = {root: "api"}
    for pid in descendants(root):
        role = ovms_role(command_line(pid))
        if role is not None:
            roles[pid] = role
    return roles


def tree_roles(root: int, role: str) -> dict[int, str]:
    """A process and everything below it, all counted as `role`."""
    return {pid: role for pid in [root, *descendants(root)]}


def cpu_by_role(before: dict[int, float], after: dict[int, float], roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds spent by each role between two readings; a process missing from either reading is left out."""
    spent = dict.fromkeys(roles.values(), 0.0)
    for pid, role in roles.items():
        if pid in before and pid in after:
            spent[role] += after[pid] - before[pid]
    return spent


def read_all(pids: list[int]) -> dict[int, float]:
    return {pid: seconds for pid in pids if (seconds := cpu_seconds(pid)) is not None}


class CpuWindow:
    """Reads the CPU time of a set of processes when a measured window opens and when it closes (wall-clock
    times, `time.time()`), from a thread of its own; processes may be added until the window opens.

        with CpuWindow(start, end, roles) as cpu:
            ...  # the load
        cpu.seconds  # {"api": ..., "worker": ...}
    """

    def __init__(self, start: float, end: float, roles: dict[int, str]) -> None:
        self.start, self.end = start, end
        self.roles = dict(roles)
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cpu-window", daemon=True)

    def add(self, pid: int, role: str) -> None:
        with self._lock:
            self.roles[pid] = role

    def __enter__(self) -> CpuWindow:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.join()

    def _run(self) -> None:
        time.sleep(max(0.0, self.start - time.time()))
        with self._lock:
            roles = dict(self.roles)
        before = read_all(list(roles))
        time.sleep(max(0.0, self.end - time.time()))
        self.seconds = cpu_by_role(before, read_all(list(roles)), roles)

    def ms_per_request(self, requests: int) -> dict[str, float]:
        return {role: seconds * 1000 / requests for role, seconds in self.seconds.items()} if requests else {}
