"""Helpers shared by the benchmarks: best-of-N timing and the one-JSON-object-last-line convention."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Smallest wall time of ``repeats`` runs of ``fn``, in seconds (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def emit(name: str, figures: dict[str, object]) -> None:
    """Print the benchmark's figures as one JSON object on the last line."""
    record = {"benchmark": name, "python": platform.python_version(), "machine": platform.machine(), **figures}
    print(json.dumps(record, sort_keys=True))
