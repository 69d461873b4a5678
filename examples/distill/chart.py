"""Draw docs/img/distill_teacher_kl.png from a finished ``tinkerflow distill`` run directory.

    .venv/bin/python examples/distill/chart.py runs/distill_people_json docs/img/distill_teacher_kl.png

The training batches' per-token reverse KL to the teacher (``teacher_kl``, one point per step) and the held-out one
(before training, every ``eval_every`` steps, and after training), as the run's ``teacher_kl.html`` draws them.
"""

from __future__ import annotations

import json
import pathlib
import sys

from tinkerflow.serde import from_json
from tinkerflow.shell.publish.chart import curves_png
from tinkerflow.shell.recipes.onpolicy_distill import SUMMARY_FILE, DistillResult, kl_rows


def main(run_dir: str, out: str) -> None:
    result = from_json((pathlib.Path(run_dir) / SUMMARY_FILE).read_bytes(), DistillResult)
    steps = json.loads((pathlib.Path(run_dir) / "config.json").read_text())["steps"]
    rows = kl_rows(run_dir, result, steps)
    png = curves_png(rows, ["teacher_kl", "held_out_teacher_kl"], "On-policy distillation: reverse KL to the teacher")
    if png is None:
        raise SystemExit(f"{run_dir}: no KL in metrics.jsonl")
    pathlib.Path(out).write_bytes(png)
    for row in rows:
        line = {key: row[key] for key in ("step", "teacher_kl", "held_out_teacher_kl") if key in row}
        print(json.dumps(line))


if __name__ == "__main__":
    main(*sys.argv[1:3])
