"""The directory of prometheus_client's multiprocess mode that a `--grpc_workers` supervisor gives its api
processes, and the removal of those whose supervisor died without removing its own (SIGKILL, OOM killer).

A supervisor holds an flock on its directory for as long as it runs (the kernel drops it when the
process dies, however it dies), so a directory whose lock can be taken is a dead supervisor's: the next
supervisor to start removes it. The lock is taken before the directory gets the name that marks it
removable, so a directory is never seen unlocked while its supervisor lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

_PREFIX = "ovms-api-metrics-"  # only directories of this name are ever removed
_NEW_PREFIX = "ovms-new-api-metrics-"  # while the lock is being taken


class MetricsDirectory:
    def __init__(self) -> None:
        """Remove dead supervisors' directories, then make this one's, locked."""
        remove_orphans()
        fresh = tempfile.mkdtemp(prefix=_NEW_PREFIX)
        self._lock = os.open(fresh, os.O_RDONLY)  # not inherited by the api processes
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = os.path.join(os.path.dirname(fresh), _PREFIX + os.path.basename(fresh)[len(_NEW_PREFIX) :])
        os.rename(fresh, self.path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)


def remove_orphans() -> None:
    """Remove every metrics directory in the temporary directory whose supervisor is gone."""
    for path in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # removed meanwhile, a symbolic link, or another user's
            continue
        try:
            if os.fstat(descriptor).st_uid != os.getuid():
                raise PermissionError  # even as root: only this user's supervisors' directories
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its supervisor runs
            os.close(descriptor)
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
        os.close(descriptor)
