"""Cost of runtime shape/dtype checking (``tinkerflow.arrays.checked``) per call, on and off.

Run: ``python benchmarks/bench_checks.py``. Checks are switched at call time (``tinkerflow.arrays.set_runtime_checks``;
the shell applies ``TINKERFLOW_RUNTIME_CHECKS=0`` when ``tinkerflow.shell`` is imported); the wrapper stays, so
"checked off" is what a run with checks off pays and "unwrapped" is the plain function.
"""

from __future__ import annotations

import timeit

import numpy as np
from jaxtyping import Float32

from _common import emit
from tinkerflow.arrays import checked, runtime_checks


def center(rewards_G: Float32[np.ndarray, " G"]) -> Float32[np.ndarray, " G"]:
    return rewards_G - rewards_G.mean()


def main() -> None:
    checked_center = checked(center)
    rewards = np.arange(16, dtype=np.float32)
    calls = 20_000

    def per_call(fn: object) -> float:
        timer = timeit.Timer(lambda: fn(rewards))  # type: ignore[operator]  # benchmark glue
        return min(timer.repeat(repeat=5, number=calls)) / calls

    unwrapped = per_call(center)
    on = per_call(checked_center)
    with runtime_checks(False):
        off = per_call(checked_center)
    print(f"unwrapped: {unwrapped * 1e6:.2f} us/call; checked on: {on * 1e6:.2f} us; checked off: {off * 1e6:.2f} us")
    emit(
        "runtime_checks",
        {
            "unwrapped_us": round(unwrapped * 1e6, 3),
            "checked_on_us": round(on * 1e6, 3),
            "checked_off_us": round(off * 1e6, 3),
            "overhead_on_us": round((on - unwrapped) * 1e6, 3),
            "overhead_off_us": round((off - unwrapped) * 1e6, 3),
        },
    )


if __name__ == "__main__":
    main()
