"""One thread's OpenMP thread count, set without touching other threads. (Shell: ctypes, ``/proc``.)

The local sampler's engine thread runs thousands of tiny attention calls per second. When another thread of the
process (the caller's main thread, a training loop) has also run torch operations, two OpenMP teams share the
cores and every parallel region of the engine waits to wake its team: measured on a 2-core machine, a decode
step's row attention took 3.5 times longer. Running those tiny calls on one thread avoids the wake-ups.

``torch.set_num_threads`` would do it but also changes a process-wide default (threads that start torch work later
begin from it), so :func:`single_threaded` calls OpenMP's own per-thread ``omp_set_num_threads`` in the GNU OpenMP
runtime torch loaded (found in ``/proc/self/maps``). Elsewhere (another OS or runtime) it does nothing: the results
are the same either way for a given thread count, only the speed differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator

__all__ = ["single_threaded"]


@functools.cache
def _gnu_openmp() -> ctypes.CDLL | None:
    """The GNU OpenMP runtime already loaded in this process, or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/libgomp" in line})
    except OSError:
        return None
    if len(paths) != 1:  # none, or two runtimes: which one torch uses is unknown
        return None
    try:
        runtime = ctypes.CDLL(paths[0])  # already loaded: the same instance
    except OSError:
        return None
    if not hasattr(runtime, "omp_set_num_threads") or not hasattr(runtime, "omp_get_max_threads"):
        return None
    runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
    runtime.omp_get_max_threads.restype = ctypes.c_int
    return runtime


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Within this block, this thread's torch CPU operations use one OpenMP thread (other threads unaffected)."""
    runtime = _gnu_openmp()
    if runtime is None:
        yield
        return
    previous = int(runtime.omp_get_max_threads())
    runtime.omp_set_num_threads(1)
    try:
        yield
    finally:
        runtime.omp_set_num_threads(previous)
