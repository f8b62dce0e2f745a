"""Child processes that do not outlive their parent, even when it is killed with SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A Popen `preexec_fn`: the child gets SIGTERM when the thread that started it ends, i.e. when its
    parent dies without cleaning up (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op). Start children
    from threads that live as long as the process (the main one, or a daemon watcher)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
