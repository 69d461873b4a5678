"""``tinkerflow eval TARGET --benchmark NAME``: a benchmark over an RL environment, resumable. (Shell.)

The items come from :func:`tinkerflow.shell.evals.benchmarks.get_benchmark` (``arithmetic``, ``math_boxed``,
``gsm8k``, ``jsonl:<path>``; ``--option key=value`` sets a benchmark's own options) and are played by
:func:`tinkerflow.shell.evals.benchmark.run_benchmark` into ``--out DIR/<name>``: run the same command again after an
interruption and only the missing items run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalResult
from tinkerflow.render import Renderer
from tinkerflow.shell.evals.benchmark import run_benchmark
from tinkerflow.shell.evals.benchmarks import benchmark_options, get_benchmark
from tinkerflow.shell.evals.targets import Target

__all__ = ["parse_options", "run_benchmark_command"]


def parse_options(pairs: list[str] | None) -> dict[str, object]:
    """``key=value`` pairs as a dict; a value that parses as JSON (``3``, ``true``, ``0.5``) is that value, any other
    is the string."""
    options: dict[str, object] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError("eval", "option", f"{pair!r} is not key=value.", "write --option n=50.")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def run_benchmark_command(
    args: argparse.Namespace, target: Target, renderer: Renderer, out: pathlib.Path | None
) -> EvalResult:
    """Run the benchmark the options name against ``target``; its result as an evaluation's."""
    if out is None:
        raise ConfigError("eval", "out", "a benchmark needs --out DIR (its transcripts and resume state go there).")
    options = parse_options(args.option)
    limit, seed, group_size = args.limit, args.seed, args.group_size
    items = get_benchmark(args.benchmark, renderer, limit=limit, seed=seed, group_size=group_size, **options)
    folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", args.benchmark)
    result = run_benchmark(
        args.benchmark, items, target.sampler, out_dir=folder, concurrency=args.concurrency, seed=args.seed,
        progress=not args.no_progress, temperature=args.temperature, max_tokens=args.max_tokens,
        options=benchmark_options(args.benchmark, limit=limit, seed=seed, group_size=group_size, **options),
    )  # fmt: skip
    if result.resumed:
        print(f"resumed: {result.resumed} items read back from {folder}, {result.ran} run now", file=sys.stderr)
    return result.eval_result
