"""Give freed memory back to the system after large requests.

glibc's malloc keeps freed memory in its arenas, and after a large allocation is freed it raises its
mmap threshold (up to 32 MiB), so later buffers of many MiB come from the arenas too: after a burst of
large requests a worker would keep its peak resident size. `malloc_trim(0)` returns the free pages of
every arena. It costs a walk of the heap, so it runs only after large requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util

TRIM_AFTER_BYTES = 16 << 20  # a request at least this large is followed by a trim


def _load_trim() -> ctypes._CFuncPtr | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_trim()


def give_back(nbytes: int) -> None:
    """After a request of `nbytes` finished: return freed memory to the system if it was large."""
    if nbytes >= TRIM_AFTER_BYTES and _malloc_trim is not None:
        _malloc_trim(0)
