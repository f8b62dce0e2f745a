"""Child processes that do not outlive their parent, even when it is killed with SIGKILL."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time


def dying_with_parent(command: list[str]) -> list[str]:
    """`command`, run so that it gets SIGTERM when the thread that started it ends, i.e. when its parent dies
    without cleaning up: through util-linux's `setpriv --pdeathsig` (Linux PR_SET_PDEATHSIG, which survives
    the exec). Start children from threads that live as long as the process (the main one, or a daemon
    watcher). Without setpriv (not Linux), `command` as it is.

    Not a Popen `preexec_fn`: that runs Python in the forked child of a process whose gRPC and Redis threads
    may hold locks at the fork, and runs gRPC's at-fork handlers there; a restarted worker was seen to abort
    (SIGABRT) that way before it could exec."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


def stop_all(processes: list[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM every child still running, wait for all of them within `timeout_s` in all, SIGKILL the rest."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
