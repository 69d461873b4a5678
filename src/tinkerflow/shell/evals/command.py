"""``tinkerflow eval``: evaluations, benchmarks and Inspect tasks against a checkpoint or a model. (Shell.)

::

    tinkerflow eval TARGET --evals evals.json                     # a list of EvalSpec records (or {"evals": [...]})
    tinkerflow eval TARGET --kind json_match --data test.jsonl [--schema s.json] [--name N] [--limit N] ...
    tinkerflow eval TARGET --task tinkerflow/arithmetic_exact     # an Inspect AI task
    tinkerflow eval TARGET --benchmark math_boxed --out DIR [--limit N] [--group-size N] [--option set=grade_school]

``TARGET`` is a ``tinker://`` / ``local://`` checkpoint, a checkpoint folder, a run directory (its latest weights)
or a base model name
(:mod:`tinkerflow.shell.evals.targets`). Results print as a table; ``--out DIR`` also writes ``results.json`` and
one transcript per evaluation (``DIR/<name>.jsonl``; a benchmark's transcripts and resume state go to
``DIR/<benchmark>/``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import TextIO

from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalResult, EvalSpec, check_unique_names
from tinkerflow.evals.spec import EvalKind
from tinkerflow.serde import structure, unstructure

__all__ = ["main", "specs_from_args"]

_KINDS: tuple[EvalKind, ...] = (
    "exact_match", "regex", "json_match", "boxed_math", "multiple_choice", "nll", "judge", "inspect",
)  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinkerflow eval",
        description="Evaluate a checkpoint or a model: evaluations (exact match, regex, JSON schema, boxed math, "
        "multiple choice, NLL, pairwise judge), benchmarks over RL environments, Inspect AI tasks. See docs/evals.md.",
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="tinker://... or local://... checkpoint, a checkpoint folder, a run directory (latest checkpoint), or "
        "a base model name (e.g. HuggingFaceTB/SmolLM2-135M-Instruct, tiny-llama)",
    )
    what = parser.add_argument_group("what to evaluate (one of --evals, --kind, --task, --benchmark)")
    what.add_argument("--evals", metavar="FILE", help='a JSON file: a list of EvalSpec records, or {"evals": [...]}')
    what.add_argument("--kind", choices=_KINDS, help="one evaluation of this kind (with --data, ...)")
    what.add_argument("--task", help="an Inspect AI task (registered name or file.py@task)")
    what.add_argument("--benchmark", help="a benchmark over an RL environment (e.g. arithmetic, math_boxed, gsm8k)")
    spec = parser.add_argument_group("the evaluation of --kind / --task")
    spec.add_argument("--data", help="JSONL examples (messages or prompt; reference / choices + answer)")
    spec.add_argument("--name", help="its name (default: the kind)")
    spec.add_argument("--schema", help="json_match: a JSON-schema file")
    spec.add_argument("--pattern", help="regex: the expression (its first group is the answer)")
    spec.add_argument("--judge-model", help="judge: the judge's model or checkpoint (default: the target's base)")
    spec.add_argument("--no-normalize", action="store_true", help="compare answers exactly (only ends stripped)")
    spec.add_argument("--choice-norm", choices=("sum", "mean"), default="sum", help="multiple_choice comparison")
    common = parser.add_argument_group("sampling and output")
    common.add_argument("--limit", type=int, help="the first N examples (or benchmark items)")
    common.add_argument(
        "--max-tokens", type=int, default=None, help="most tokens per answer (default 64; a benchmark's own)"
    )
    common.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    common.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    common.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    common.add_argument("--group-size", type=int, default=1, help="benchmark: samples per item (default 1)")
    common.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="benchmark: one of its own options (repeatable)"
    )
    common.add_argument("--renderer", help="renderer name (default: the model family's)")
    common.add_argument("--out", metavar="DIR", help="write results.json and transcripts here")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    source = parser.add_argument_group("where the target is")
    source.add_argument("--checkpoint-dir", help="the local checkpoint directory of local:// paths")
    source.add_argument("--base-url", help="the Tinker server of tinker:// targets (default $TINKER_BASE_URL)")
    return parser


def specs_from_args(args: argparse.Namespace) -> tuple[EvalSpec, ...]:
    """The evaluations the options describe (``--evals`` file, or one ``--kind`` / ``--task``)."""
    if args.evals:
        path = pathlib.Path(args.evals)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError("eval", "evals", f"cannot read {args.evals!r}: {error}.") from error
        items = raw.get("evals") if isinstance(raw, dict) else raw
        if not isinstance(items, list) or not items:
            raise ConfigError("eval", "evals", f"{args.evals!r} holds no list of evaluations.")
        specs = tuple(structure(item, EvalSpec) for item in items)
        base = path.parent
        specs = tuple(_relative_to(spec, base) for spec in specs)
    else:
        kind: EvalKind = "inspect" if args.task else args.kind
        specs = (
            EvalSpec(
                name=args.name or (args.task.replace("/", "_").replace("@", "_") if args.task else kind),
                kind=kind,
                data=args.data,
                limit=args.limit,
                max_tokens=args.max_tokens or 64,
                temperature=args.temperature,
                pattern=args.pattern,
                schema=args.schema,
                normalize=not args.no_normalize,
                choice_norm=args.choice_norm,
                judge_model=args.judge_model,
                task=args.task,
            ),
        )
    check_unique_names(specs, "eval")
    return specs


def _relative_to(spec: EvalSpec, base: pathlib.Path) -> EvalSpec:
    """Relative ``data`` / ``schema`` paths of an ``--evals`` file are read from the file's folder when they are not
    found from the current one."""
    import attrs

    def moved(value: str | None) -> str | None:
        if value is not None and not pathlib.Path(value).exists() and (base / value).exists():
            return str(base / value)
        return value

    return attrs.evolve(spec, data=moved(spec.data), schema=moved(spec.schema))


def _table(results: Sequence[EvalResult], stream: TextIO) -> None:
    stream.write(f"{'evaluation':<24} {'kind':<16} {'n':>5}  {'score':>8}  {'± stderr':>8}\n")
    for result in results:
        stream.write(f"{result.name:<24} {result.kind:<16} {result.n:>5}  {result.mean:>8.4f}  {result.stderr:>8.4f}\n")
        for key, value in sorted(result.metrics.items()):
            stream.write(f"{'':<24}   {key:<38} {value:>8.4f}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tinkerflow eval`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    chosen = [flag for flag in ("evals", "kind", "task", "benchmark") if getattr(args, flag)]
    if len(chosen) != 1:
        _parser().error("give exactly one of --evals, --kind, --task, --benchmark.")
    from tinkerflow.shell.evals.inline import make_judge
    from tinkerflow.shell.evals.runner import (
        Judge,
        evaluate,
        inspect_runner,
        load_examples,
        load_schema,
        write_transcript,
    )
    from tinkerflow.shell.evals.targets import open_target

    specs = () if args.benchmark else specs_from_args(args)
    examples = {spec.name: load_examples(spec) for spec in specs if spec.kind != "inspect"}
    schemas = {spec.name: load_schema(spec) for spec in specs}
    target = open_target(
        args.target, renderer=args.renderer, checkpoint_dir=args.checkpoint_dir, base_url=args.base_url
    )
    try:
        renderer = target.renderer
        out = pathlib.Path(args.out) if args.out else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        print(f"evaluating {target.label} (base {target.base_model}, renderer {renderer.name})", file=sys.stderr)
        if args.benchmark:
            from tinkerflow.shell.evals.command_benchmark import run_benchmark_command

            results = [run_benchmark_command(args, target, renderer, out)]
        else:
            results = []
            inspect = inspect_runner(specs)
            for spec in specs:
                judge: Judge | None = None
                if spec.kind == "judge":
                    judge = make_judge(target.backend, spec.judge_model or target.base_model, args.renderer)
                outcome = evaluate(
                    spec, examples.get(spec.name, ()), target.sampler, renderer, seed=args.seed,
                    concurrency=args.concurrency, schema=schemas[spec.name], judge=judge, inspect=inspect,
                )  # fmt: skip
                results.append(outcome.result)
                if out is not None:
                    write_transcript(out / f"{spec.name}.jsonl", outcome)
    finally:
        target.close()
    _table(results, sys.stdout)
    if out is not None:
        from tinkerflow.shell.io.run_dir import atomic_write_text

        summary = {
            "target": target.label, "base_model": target.base_model, "checkpoint": target.checkpoint,
            "seed": args.seed, "results": [unstructure(result) for result in results],
        }  # fmt: skip
        atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=float) + "\n")
    return 0
