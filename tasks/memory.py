"""Give freed memory back to the system after large requests.

glibc's malloc keeps freed memory in its arenas, and after a large allocation is freed it raises its
mmap threshold (up to 32 MiB), so later buffers of many MiB come from the arenas too; gRPC also
receives a large message in many small slices. After a burst of large requests a process would keep
its peak resident size (measured: the api kept 660-790 MB of 4 x 256 MiB Predicts, the worker 2.4 GB).
`malloc_trim(0)` returns the free pages every arena holds. It costs a walk of the heap, so it runs
only after large requests, off the request path, and once the request's buffers are freed (a gRPC
request message outlives the data plane's part of the call): `TrimSoon`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

LARGE_REQUEST_BYTES = 16 << 20  # a request at least this large is followed by a trim
TRIM_DELAY_S = 0.5  # time for the frontend to send the answer and free the request


def _load_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator is left as it is
        return None


_malloc_trim = _load_trim()


def trim() -> None:
    """Return the free memory of every malloc arena to the system (no-op without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class TrimSoon:
    """Trims once, shortly after large requests finished; asking again meanwhile costs nothing."""

    def __init__(self, delay_s: float = TRIM_DELAY_S) -> None:
        self._delay_s = delay_s
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def after(self, nbytes: int) -> None:
        """A request of `nbytes` finished: trim soon if it was large."""
        if nbytes < LARGE_REQUEST_BYTES or _malloc_trim is None:
            return
        with self._lock:
            if self._thread is None:  # started on first use: most processes never see a large request
                self._thread = threading.Thread(target=self._run, name="ovms-trim", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            time.sleep(self._delay_s)
            self._wanted.clear()
            trim()
