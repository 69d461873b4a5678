"""How the C library's ``malloc`` hands freed tensor memory back to the system, for the local backend. (Shell.)

PyTorch's CPU tensors live in glibc's ``malloc`` heap. During an 8 x 512 SmolLM2 training step the heap fragments:
measured with ``mallinfo2`` after one fp32 decoder forward pass, 368 MB of it were in use and 934 MB free yet still
resident, and the resident size keeps that high-water mark. Two remedies, chosen by
``LocalBackend(return_freed_memory=...)`` (figures in docs/backends.md):

* :func:`map_large_blocks` (``True``): blocks of 1 MiB and more are mapped and unmapped one by one, so freed memory
  leaves at once: the lowest peak, but each such block is fresh pages to fault in (a step about a third slower).
* :func:`trim` between forward/backward passes (``"between_passes"``): the heap works as usual within a pass and
  its free pages go back to the system before the next one: nearly the speed of keeping them, a peak in between.

Both are no-ops (``False``) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Final

__all__ = ["map_large_blocks", "trim"]

#: glibc's ``mallopt`` parameter for the size from which ``malloc`` maps memory rather than using its heap.
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD_BYTES: Final = 1 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return libc


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (process-wide; it also turns off glibc's own raising of the threshold);
    whether it was set."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def trim() -> bool:
    """Give the free pages of every ``malloc`` arena back to the system (``malloc_trim(0)``); whether any went."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))
