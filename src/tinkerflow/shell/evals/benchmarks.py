"""Benchmark items: the registry that makes them by name, and the record of a played one. (Shell: reads files and,
for ``gsm8k``, Hugging Face datasets.) :func:`~tinkerflow.shell.evals.benchmark.run_benchmark` plays them.

::

    builders = get_benchmark("gsm8k", renderer, limit=200)
    options = benchmark_options("gsm8k", limit=200)        # recorded in the run's settings
    run_benchmark("gsm8k", builders, sampler, out_dir=..., options=options)

========================== ===========================================================================================
``arithmetic``             the RL arithmetic environment: ``n`` problems (default 100) drawn from ``seed``
                           (:mod:`tinkerflow.rl.envs.arithmetic`; options ``n``, ``max_operand``, ``fewshot``,
                           ``format_coef``, ``max_tokens``)
``math_boxed``             boxed-answer math: the 8 built-in problems of :mod:`tinkerflow.rl.envs.math_boxed` and 42
                           grade-school word problems written for tinkerflow (``sets/grade_school.jsonl``, CC0);
                           option ``set``: ``all`` (default), ``builtin`` or ``grade_school``
``gsm8k``                  GSM8K's ``main`` test split (``hf:openai/gsm8k``; needs the hub or its cache), the answer
                           after ``####`` graded as boxed math; options ``source`` (any ``hf:``/``hf-disk:`` source
                           with ``question``/``answer`` columns), ``split``, ``subset``
``jsonl:<path>``           a JSONL file of ``{"question", "answer"[, "id"]}`` rows, graded as boxed math
========================== ===========================================================================================

Every math benchmark takes ``fewshot`` (one worked boxed example first; default on), ``format_coef`` (0.1) and
``max_tokens`` (default 256). ``limit`` keeps the first items; ``group_size`` samples each item that many times;
``seed`` draws the arithmetic problems (the other sets are fixed).
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import int_at_least, positive_int
from tinkerflow.config import is_hf_source
from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer
from tinkerflow.rl.envs import arithmetic, math_boxed
from tinkerflow.rl.envs.base import ProblemOptions
from tinkerflow.rl.envs.math_boxed import MathProblem
from tinkerflow.rl.transcripts import episode_transcripts
from tinkerflow.rl.types import Env, EnvGroupBuilder, Metrics, Trajectory, TrajectoryGroup
from tinkerflow.rows import DataError
from tinkerflow.shell.evals.sets import jsonl_rows, load_problem_rows, offline_problems
from tinkerflow.shell.io.data import open_hf_dataset

__all__ = [
    "BENCHMARKS",
    "JSONL_PREFIX",
    "Benchmark",
    "BenchmarkItem",
    "BenchmarkRequest",
    "EpisodeRecord",
    "ItemRecord",
    "OptionValue",
    "TurnRecord",
    "benchmark_options",
    "get_benchmark",
    "gsm8k_answer",
    "item_record",
    "mean_metrics",
]

JSONL_PREFIX: Final = "jsonl:"
_MATH_OPTIONS: Final[Mapping[str, OptionValue]] = {"fewshot": True, "format_coef": 0.1, "max_tokens": 256}


# -- items and their records ----------------------------------------------------------------------------------------

#: A benchmark option's value (JSON scalars), as recorded in a run's settings.
OptionValue: TypeAlias = str | int | float | bool | None


@attrs.frozen
class BenchmarkItem:
    """An :class:`~tinkerflow.rl.types.EnvGroupBuilder` with the id the benchmark names it by (transcripts and
    resume key on it). It delegates to ``builder``."""

    item_id: str
    builder: EnvGroupBuilder

    async def make_envs(self) -> Sequence[Env]:
        return await self.builder.make_envs()

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return await self.builder.compute_group_rewards(trajectories)

    def tags(self) -> tuple[str, ...]:
        return tuple(self.builder.tags())


@attrs.frozen
class TurnRecord:
    """One turn of an episode: the new part of the observation, the decoded action, its reward and the step's
    metrics and logs."""

    observation: str
    action: str
    reward: float
    stop_reason: str
    masked: bool = False
    metrics: dict[str, float] = attrs.field(factory=dict)
    logs: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class EpisodeRecord:
    """One member's episode."""

    member: int
    total_reward: float
    turns: tuple[TurnRecord, ...]
    group_metrics: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen
class ItemRecord:
    """One finished item: a line of ``transcripts.jsonl``.

    Attributes:
        id: the item's id.
        index: its position in the list of builders.
        reward: the mean total reward of its finished members (``None`` when all failed).
        metrics: the means of the step metrics (and ``group/<key>`` of group metrics).
        prompt: the first observation, decoded.
        episodes: each finished member's transcript.
        failures: ``"member <i> (<kind>): <message>"`` per failed member (``member -1``: the whole group).
        tags: the builder's tags.
    """

    id: str
    index: int
    reward: float | None
    metrics: dict[str, float]
    prompt: str
    episodes: tuple[EpisodeRecord, ...]
    failures: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def _finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(metrics.items()) if math.isfinite(value)}


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = sorted({key for row in rows for key in row})
    return {key: float(np.mean([row[key] for row in rows if key in row])) for key in keys}


def _episode_metrics(trajectory: Trajectory, group_metrics: Mapping[str, float]) -> dict[str, float]:
    steps = mean_metrics([transition.metrics for transition in trajectory.transitions])
    steps.update({f"group/{key}": float(value) for key, value in group_metrics.items()})
    return _finite_metrics(steps)


def item_record(item_id: str, index: int, group: TrajectoryGroup, decode: Callable[[np.ndarray], str]) -> ItemRecord:
    """The record of one rolled-out item (its transcript decoded with ``decode``)."""
    transcripts = episode_transcripts(0, [group], decode)
    totals = group.total_rewards_G()
    episodes: list[EpisodeRecord] = []
    per_member: list[dict[str, float]] = []
    for member, trajectory, group_metrics, transcript, total in zip(
        group.member_indices, group.trajectories, group.metrics_G, transcripts, totals.tolist(), strict=True
    ):
        turns = tuple(
            TurnRecord(
                observation=turn.observation,
                action=turn.action,
                reward=turn.reward,
                stop_reason=transition.stop_reason,
                masked=turn.masked,
                metrics=_finite_metrics(transition.metrics),
                logs=dict(transition.logs),
            )
            for turn, transition in zip(transcript.turns, trajectory.transitions, strict=True)
        )
        episodes.append(EpisodeRecord(member, float(total), turns, _finite_metrics(group_metrics)))
        per_member.append(_episode_metrics(trajectory, group_metrics))
    failures = tuple(f"member {failure.index} ({failure.kind}): {failure.message}" for failure in group.failures)
    return ItemRecord(
        id=item_id,
        index=index,
        reward=float(totals.mean()) if totals.size else None,
        metrics=mean_metrics(per_member),
        prompt=episodes[0].turns[0].observation if episodes and episodes[0].turns else "",
        episodes=tuple(episodes),
        failures=failures,
        tags=group.tags,
    )


# -- the registry ---------------------------------------------------------------------------------------------------


@attrs.frozen
class BenchmarkRequest:
    """What :func:`get_benchmark` was asked for: the renderer, the common knobs and the benchmark's own options
    (defaults filled in)."""

    renderer: Renderer
    limit: int | None
    seed: int
    group_size: int
    options: Mapping[str, OptionValue]


@attrs.frozen
class Benchmark:
    """A named benchmark: its options with their defaults and the function that makes its items."""

    name: str
    description: str
    defaults: Mapping[str, OptionValue]
    make: Callable[[BenchmarkRequest], list[BenchmarkItem]]


def _limited(items: Iterable[tuple[str, MathProblem]], limit: int | None) -> list[tuple[str, MathProblem]]:
    out: list[tuple[str, MathProblem]] = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out


def _bad(key: str, kind: str, value: object) -> ConfigError:
    return ConfigError("get_benchmark", f"options.{key}", f"must be {kind}, got {value!r}.")


def _bool(request: BenchmarkRequest, key: str) -> bool:
    value = request.options[key]
    if not isinstance(value, bool):
        raise _bad(key, "true or false", value)
    return value


def _float(request: BenchmarkRequest, key: str) -> float:
    value = request.options[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, "a number", value)
    return float(value)


def _int(request: BenchmarkRequest, key: str, *, allow_none: bool = False) -> int | None:
    value = request.options[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, "an int" + (" or null" if allow_none else ""), value)
    return value


def _str(request: BenchmarkRequest, key: str, *, allow_none: bool = False) -> str | None:
    value = request.options[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise _bad(key, "a string" + (" or null" if allow_none else ""), value)
    return value


def _problem_options(request: BenchmarkRequest) -> ProblemOptions:
    return ProblemOptions(
        fewshot=_bool(request, "fewshot"),
        format_coef=_float(request, "format_coef"),
        max_tokens=_int(request, "max_tokens", allow_none=True),
    )


def _math_items(request: BenchmarkRequest, problems: Sequence[tuple[str, MathProblem]]) -> list[BenchmarkItem]:
    options = _problem_options(request)
    return [
        BenchmarkItem(item_id, math_boxed.builder(request.renderer, problem, request.group_size, options))
        for item_id, problem in _limited(problems, request.limit)
    ]


def _arithmetic(request: BenchmarkRequest) -> list[BenchmarkItem]:
    n = positive_int(_int(request, "n"), "get_benchmark", "options.n")
    max_operand = _int(request, "max_operand")
    assert max_operand is not None
    common = _problem_options(request)
    options = arithmetic.ArithmeticOptions(common.fewshot, common.format_coef, common.max_tokens)
    count = n if request.limit is None else min(n, request.limit)
    items = []
    for index in range(count):
        problem = arithmetic.sample_problem(np.random.default_rng((request.seed, index)), max_operand)
        builder = arithmetic.builder(request.renderer, problem, request.group_size, options)
        items.append(BenchmarkItem(str(index), builder))
    return items


def _math_boxed(request: BenchmarkRequest) -> list[BenchmarkItem]:
    which = request.options["set"]
    builtin = [(f"builtin/{index}", problem) for index, problem in enumerate(math_boxed.MATH_PROBLEMS)]
    sets: dict[object, list[tuple[str, MathProblem]]] = {
        "builtin": builtin,
        "grade_school": offline_problems(),
    }
    sets["all"] = sets["builtin"] + sets["grade_school"]
    if which not in sets:
        raise ConfigError(
            "get_benchmark", "options.set", f"unknown set {which!r}.", f"use one of {sorted(map(str, sets))}."
        )
    return _math_items(request, sets[which])


def gsm8k_answer(solution: str) -> str | None:
    """The final answer of a GSM8K solution: the text after its last ``####`` (``None`` without one)."""
    if "####" not in solution:
        return None
    answer = solution.rsplit("####", 1)[1].strip()
    return answer or None


def _gsm8k(request: BenchmarkRequest) -> list[BenchmarkItem]:
    source = _str(request, "source")
    split, subset = _str(request, "split", allow_none=True), _str(request, "subset", allow_none=True)
    if source is None or not is_hf_source(source):
        raise _bad("source", "an hf:org/name or hf-disk:/path source", source)
    dataset, prefix = open_hf_dataset(source, split, "test", subset, "source", where="benchmark gsm8k")
    missing = {"question", "answer"} - set(dataset.column_names)
    if missing:
        raise DataError(prefix, "columns", f"lacks {sorted(missing)} (it has {dataset.column_names}).")
    problems: list[tuple[str, MathProblem]] = []
    for index, row in enumerate(dataset.select_columns(["question", "answer"])):
        if request.limit is not None and len(problems) >= request.limit:
            break
        question, solution = row.get("question"), row.get("answer")
        answer = gsm8k_answer(solution) if isinstance(solution, str) else None
        if not isinstance(question, str) or answer is None:
            raise DataError(f"{prefix}[{index}]", "answer", "holds no '#### <answer>'.", "give GSM8K-format rows.")
        problems.append((str(index), MathProblem(question, answer)))
    return _math_items(request, problems)


def _jsonl(request: BenchmarkRequest, path: str) -> list[BenchmarkItem]:
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("get_benchmark", "name", f"{JSONL_PREFIX}{path}: no such file.", "give a JSONL file.")
    return _math_items(request, load_problem_rows(jsonl_rows(file, str(file)), str(file)))


#: The benchmarks by name (``jsonl:<path>`` is handled by :func:`get_benchmark` itself).
BENCHMARKS: Final[Mapping[str, Benchmark]] = {
    "arithmetic": Benchmark(
        "arithmetic",
        "a + b / a - b with small operands, answered 'Answer: N' (the RL arithmetic environment)",
        {"n": 100, "max_operand": 9, "fewshot": True, "format_coef": 0.1, "max_tokens": 16},
        _arithmetic,
    ),
    "math_boxed": Benchmark(
        "math_boxed",
        "built-in math problems and 42 grade-school word problems (offline), boxed answers",
        {"set": "all", **_MATH_OPTIONS},
        _math_boxed,
    ),
    "gsm8k": Benchmark(
        "gsm8k",
        "GSM8K main test split from Hugging Face, the answer after #### graded as boxed math",
        {"source": "hf:openai/gsm8k", "split": None, "subset": "main", **_MATH_OPTIONS},
        _gsm8k,
    ),
}


def _resolve(name: str, options: Mapping[str, object]) -> tuple[Benchmark, dict[str, OptionValue]]:
    """The benchmark ``name`` names and its options, defaults filled in (unknown ones refused)."""
    where = "get_benchmark"
    if name.startswith(JSONL_PREFIX):
        path = name[len(JSONL_PREFIX) :]
        benchmark = Benchmark(name, "a JSONL file of question/answer rows", _MATH_OPTIONS, lambda r: _jsonl(r, path))
    elif name in BENCHMARKS:
        benchmark = BENCHMARKS[name]
    else:
        raise ConfigError(
            where, "name", f"unknown benchmark {name!r}.", f"use one of {sorted(BENCHMARKS)} or jsonl:<path>."
        )
    resolved: dict[str, OptionValue] = dict(benchmark.defaults)
    for key, value in options.items():
        if key not in benchmark.defaults:
            raise ConfigError(
                where, f"options.{key}", f"is not an option of {name}.", f"its options: {sorted(benchmark.defaults)}."
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ConfigError(where, f"options.{key}", f"must be a string, number, bool or None, got {value!r}.")
        resolved[key] = value
    return benchmark, resolved


def _check_common(limit: int | None, seed: int, group_size: int) -> None:
    int_at_least(limit, "get_benchmark", "limit", 1, allow_none=True)
    int_at_least(seed, "get_benchmark", "seed", 0)
    positive_int(group_size, "get_benchmark", "group_size")


def get_benchmark(
    name: str, renderer: Renderer, *, limit: int | None = None, seed: int = 0, group_size: int = 1, **options: object
) -> Sequence[BenchmarkItem]:
    """The items of benchmark ``name`` (a key of :data:`BENCHMARKS`, or ``jsonl:<path>``) rendered with
    ``renderer``: the first ``limit`` ones, each sampled ``group_size`` times; ``options`` are the benchmark's own
    (see the module docstring). Unknown names and options raise :class:`~tinkerflow.errors.ConfigError`."""
    _check_common(limit, seed, group_size)
    benchmark, resolved = _resolve(name, options)
    return benchmark.make(BenchmarkRequest(renderer, limit, seed, group_size, resolved))


def benchmark_options(
    name: str, *, limit: int | None = None, seed: int = 0, group_size: int = 1, **options: object
) -> dict[str, OptionValue]:
    """The options :func:`get_benchmark` would use (defaults filled in, plus ``limit``, ``seed`` and
    ``group_size``): pass them to ``run_benchmark(options=...)`` so a resume with other ones is refused."""
    _check_common(limit, seed, group_size)
    _, resolved = _resolve(name, options)
    return {"limit": limit, "seed": seed, "group_size": group_size, **resolved}
