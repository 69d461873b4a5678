"""Does the SL loop keep the backend busy? A fake backend with a fixed latency per request (like a remote
service) runs the SL loop; the loop's wall time per step is compared with the backend's own busy time per step.

Run: ``python benchmarks/bench_sl_loop.py``. Target: ratio <= 1.10 (the loop adds < 10% idle time).
"""

from __future__ import annotations

import io
import json
import pathlib
import sys
import tempfile
import time

from _common import emit

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
from byte_renderer import ByteRenderer
from fakes import FakeBackend
from tinkerflow.config import SLConfig
from tinkerflow.shell.recipes.sl import prepare_sl_data, run_sl

LATENCY = 0.02  # seconds per request; each step is forward_backward + optim_step


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        data = pathlib.Path(directory) / "data.jsonl"
        with open(data, "w") as handle:
            for i in range(256):
                messages = [{"role": "user", "content": f"q{i} " * 20}, {"role": "assistant", "content": f"a{i} " * 30}]
                handle.write(json.dumps({"messages": messages}) + "\n")
        config = SLConfig(
            train_data=str(data),
            run_dir=str(pathlib.Path(directory) / "run"),
            batch_size=8,
            epochs=2,
            learning_rate=0.1,
            eval_every=0,
            save_every=0,
            num_samples_shown=0,
            test_fraction=0.0,
        )
        renderer = ByteRenderer()
        prepared = prepare_sl_data(config, renderer)
        backend = FakeBackend(latency=LATENCY)
        began = time.perf_counter()
        result = run_sl(config, backend, renderer, data=prepared, out=io.StringIO())
        wall = time.perf_counter() - began
    client = backend.clients[-1]
    # the run also does one save_state, one forward (eval after), one save for sampling: count them as work
    busy = client.busy_seconds
    ratio = wall / busy
    print(
        f"{result.steps} steps, {client.requests} requests of {LATENCY * 1e3:.0f} ms: "
        f"wall {wall:.3f} s, backend busy {busy:.3f} s"
    )
    print(f"wall / backend-busy = {ratio:.3f} (1.0 = never idle)")
    emit(
        "sl_loop_busy",
        {
            "steps": result.steps,
            "latency_s": LATENCY,
            "wall_s": round(wall, 4),
            "backend_busy_s": round(busy, 4),
            "wall_over_busy": round(ratio, 4),
        },
    )


if __name__ == "__main__":
    main()
