"""Helpers shared by the benchmarks: best-of-N timing, the one-JSON-object-last-line convention, fresh child
processes."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable, Sequence

#: The repository's root (``benchmarks/..``).
ROOT = pathlib.Path(__file__).resolve().parent.parent


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


def run_child(command: Sequence[str], label: str) -> dict[str, float]:
    """Run ``command`` (a benchmark's own child mode) in a fresh process that imports this checkout's ``src`` and
    ``benchmarks``; the JSON object on its last line. Exits with its output when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "src")])}
    done = subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{label} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
