"""Run a benchmark over RL environments: play every item to the end, save each item's transcript as it finishes,
resume after a crash, summarize. (Shell: sampling, files, a progress bar.)

::

    builders = get_benchmark("math_boxed", renderer, limit=20)         # tinkerflow.shell.evals.benchmarks
    result = run_benchmark("math_boxed", builders, sampler, out_dir="runs/bench")
    result.mean, result.stderr, result.eval_result.as_row()

An *item* is one :class:`~tinkerflow.rl.types.EnvGroupBuilder` (one problem, ``group_size`` samples of it), named
by its ``item_id`` (a :class:`~tinkerflow.shell.evals.benchmarks.BenchmarkItem`) or its position. Each item is
rolled out with :func:`tinkerflow.shell.rollouts.rollout_group` (``policy``: timeouts, failures), ``concurrency``
items at a time. Every member samples with seeds derived from ``(seed, item id, member, turn)``, never from the
order requests go out, so results do not depend on ``concurrency`` or on a resume (the member's seed rides in a
context variable that its environment sets when its episode starts: each member plays in its own task).

Files in ``out_dir``: ``benchmark.json``, the :class:`BenchmarkSettings` (a resume with other ones raises
:class:`BenchmarkResumeError` naming each changed field; ``concurrency`` and ``progress`` are not settings);
``transcripts.jsonl``, one :class:`~tinkerflow.shell.evals.benchmarks.ItemRecord` per finished item, flushed and
fsynced (on resume the complete lines are kept, a torn last line is cut off, their ids are not run again);
``summary.json``, written atomically at the end over every item (mean item reward, stderr, n, metric means, name
and settings). An item whose members all failed (``on_failure="drop"``/``"retry"``) has ``reward: null``, counts
in ``n_failed`` and is left out of the means.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import math
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import numpy as np

from tinkerflow._validate import in_range, int_at_least, positive_int, require_type
from tinkerflow.errors import ConfigError, TinkerflowError, ValidationError
from tinkerflow.evals import EvalResult, mean_and_stderr
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.types import Env, EnvGroupBuilder, Metrics, StepResult, StopCondition, Trajectory
from tinkerflow.sampling import SampledSequence
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.completers import SamplerTokenCompleter
from tinkerflow.shell.evals.benchmarks import ItemRecord, OptionValue, item_record, mean_metrics
from tinkerflow.shell.io.run_dir import RunDirError, atomic_write_text
from tinkerflow.shell.rollouts import RolloutPolicy, rollout_group

if TYPE_CHECKING:
    from tinkerflow.shell.backends.protocol import SamplingClient

__all__ = [
    "SETTINGS_FILE",
    "SUMMARY_FILE",
    "TRANSCRIPTS_FILE",
    "BenchmarkResult",
    "BenchmarkResumeError",
    "BenchmarkSettings",
    "derive_seed",
    "read_items",
    "run_benchmark",
]

SETTINGS_FILE: Final = "benchmark.json"
TRANSCRIPTS_FILE: Final = "transcripts.jsonl"
SUMMARY_FILE: Final = "summary.json"
_SEED_MODULUS: Final = 1 << 63


class BenchmarkResumeError(RunDirError):
    """``out_dir`` holds a benchmark run with other settings (or unreadable files). ``fields`` names what changed
    (``"seed"``, ``"options.limit"``, ...), empty when the files themselves are the problem."""

    def __init__(self, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields: tuple[str, ...] = tuple(fields)


@attrs.frozen
class BenchmarkSettings:
    """What a benchmark run's results depend on (a resume must have the same): the benchmark, the sampler's base
    model, the sampling seed, temperature and ``max_tokens`` cap, the number of items and a hash of their ids, and
    the ``options`` the items were made with (:func:`~tinkerflow.shell.evals.benchmarks.benchmark_options`)."""

    name: str
    model: str
    seed: int
    temperature: float
    max_tokens: int | None
    items: int
    items_digest: str
    options: dict[str, OptionValue] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {**attrs.asdict(self), "options": dict(sorted(self.options.items()))}


@attrs.frozen
class BenchmarkResult:
    """A benchmark's outcome over all its items (those read back on resume included): every item's record in list
    order; ``n`` items with a reward and ``n_failed`` without; the mean item reward, its standard error and the
    metric means over the items; ``resumed`` items read back from an earlier run and ``ran`` by this call."""

    name: str
    settings: BenchmarkSettings
    items: tuple[ItemRecord, ...]
    n: int
    n_failed: int
    mean: float
    stderr: float
    metrics: dict[str, float]
    resumed: int
    ran: int
    out_dir: pathlib.Path

    @property
    def eval_result(self) -> EvalResult:
        """The result as an evaluation's (kind ``"reward"``; metrics: the metric means), to log like one."""
        scores = np.array([item.reward for item in self.items if item.reward is not None], dtype=np.float64)
        return EvalResult(self.name, "reward", self.n, self.mean, self.stderr, scores, self.metrics)

    def summary(self) -> dict[str, object]:
        """What ``summary.json`` holds (nothing that depends on how the run was split or timed)."""
        return {
            "name": self.name,
            "n": self.n,
            "n_failed": self.n_failed,
            "mean_reward": _finite_or_none(self.mean),
            "stderr": _finite_or_none(self.stderr),
            "metrics": {key: _finite_or_none(value) for key, value in sorted(self.metrics.items())},
            "settings": self.settings.as_dict(),
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- seeding ------------------------------------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions: a SHA-256 of their JSON)."""
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_MODULUS


@attrs.define
class _MemberSeed:
    seed: int
    turns: int = 0


_MEMBER: contextvars.ContextVar[_MemberSeed] = contextvars.ContextVar("tinkerflow_benchmark_member")


class _SeededEnv:
    """An environment that, when its episode starts, puts its member's seed in the running task's context (each
    member plays in its own task, so the completer reads the right one whatever the interleaving)."""

    def __init__(self, env: Env, seed: int) -> None:
        self.env = env
        self.seed = seed

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        _MEMBER.set(_MemberSeed(self.seed))
        return await self.env.initial_observation()

    async def step(self, action: SampledSequence) -> StepResult:
        return await self.env.step(action)


@attrs.frozen
class _SeededBuilder:
    builder: EnvGroupBuilder
    seed: int
    item_id: str

    async def make_envs(self) -> Sequence[Env]:
        envs = await self.builder.make_envs()
        return [_SeededEnv(env, derive_seed(self.seed, self.item_id, member)) for member, env in enumerate(envs)]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return await self.builder.compute_group_rewards(trajectories)

    def tags(self) -> tuple[str, ...]:
        return tuple(self.builder.tags())


@attrs.frozen
class _SeededCompleter:
    """One ``sample`` request per action, seeded by ``(member seed, turn)``."""

    sampler: SamplingClient
    temperature: float
    max_tokens: int | None

    async def __call__(self, observation: ModelInput, stop: StopCondition) -> SampledSequence:
        member = _MEMBER.get(None)
        if member is None:
            raise ValidationError(
                "run_benchmark", "completer", "was called outside a seeded episode.", "this is a tinkerflow bug."
            )
        seed = derive_seed(member.seed, member.turns)
        member.turns += 1
        completer = SamplerTokenCompleter(self.sampler, self.temperature, self.max_tokens, seed)
        return await completer(observation, stop)


# -- records --------------------------------------------------------------------------------------------------------


def _item_ids(builders: Sequence[EnvGroupBuilder]) -> list[str]:
    ids: list[str] = []
    seen: dict[str, int] = {}
    for index, builder in enumerate(builders):
        given = getattr(builder, "item_id", None)
        item_id = given if isinstance(given, str) else str(index)
        if item_id in seen:
            raise ValidationError(
                "run_benchmark",
                f"builders[{index}].item_id",
                f"{item_id!r} is also the id of builders[{seen[item_id]}].",
                "give every item its own id.",
            )
        seen[item_id] = index
        ids.append(item_id)
    return ids


# -- files --------------------------------------------------------------------------------------------------------


def read_items(path: pathlib.Path, *, repair: bool = False) -> list[ItemRecord]:
    """The complete item records of a ``transcripts.jsonl``. A last line without its newline, or that does not
    parse (a crash mid-write), is ignored and, with ``repair``, cut off the file. A bad line before the last
    raises :class:`BenchmarkResumeError`."""
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[ItemRecord] = []
    offset = 0
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        try:
            if not line.endswith(b"\n"):
                raise TinkerflowError("the line has no newline")
            if line.strip():
                records.append(from_json(line, ItemRecord))
        except TinkerflowError as error:
            if not last:
                raise BenchmarkResumeError(
                    f"{path}:{number}: unreadable item record ({error}); move the file away to start over."
                ) from error
            if repair:
                os.truncate(path, offset)
            break
        offset += len(line)
    return records


def _check_settings(path: pathlib.Path, settings: BenchmarkSettings) -> None:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkResumeError(f"{path}: unreadable benchmark settings ({error}).") from error
    wanted = json.loads(json.dumps(settings.as_dict()))
    if not isinstance(saved, dict):
        raise BenchmarkResumeError(f"{path}: the settings are not a JSON object.")
    changed: list[str] = []
    for key in sorted(set(saved) | set(wanted)):
        before, after = saved.get(key), wanted.get(key)
        if key == "options" and isinstance(before, dict) and isinstance(after, dict):
            changed += [
                f"options.{name}" for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)
            ]
        elif before != after:
            changed.append(key)
    if changed:
        details = "; ".join(_change(name, saved, wanted) for name in changed)
        raise BenchmarkResumeError(
            f"{path.parent}: holds a benchmark run with other settings (changed: {details}); "
            "use another out_dir to start over, resume=False to overwrite, or the same settings to resume.",
            changed,
        )


def _change(name: str, saved: Mapping[str, object], wanted: Mapping[str, object]) -> str:
    def lookup(source: Mapping[str, object]) -> object:
        value: object = source
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return f"{name}: {lookup(saved)!r} -> {lookup(wanted)!r}"


def _append_line(path: pathlib.Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _prepare(out_dir: pathlib.Path, settings: BenchmarkSettings, ids: Sequence[str], resume: bool) -> list[ItemRecord]:
    """Create or reopen ``out_dir``: the records already there (resume), else a fresh start."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path, transcripts = out_dir / SETTINGS_FILE, out_dir / TRANSCRIPTS_FILE
    if resume and settings_path.exists():
        _check_settings(settings_path, settings)
        done = read_items(transcripts, repair=True)
        known = set(ids)
        for record in done:
            if record.id not in known:
                raise BenchmarkResumeError(f"{transcripts}: item {record.id!r} is not one of this benchmark's items.")
        return list({record.id: record for record in done}.values())
    if resume and transcripts.exists() and transcripts.stat().st_size:
        raise BenchmarkResumeError(
            f"{out_dir}: holds {TRANSCRIPTS_FILE} without its {SETTINGS_FILE}; move it away, or pass resume=False."
        )
    for name in (TRANSCRIPTS_FILE, SUMMARY_FILE):
        (out_dir / name).unlink(missing_ok=True)
    atomic_write_text(settings_path, json.dumps(settings.as_dict(), indent=2) + "\n")
    return []


# -- the run ------------------------------------------------------------------------------------------------------


async def _play_all(
    todo: Sequence[tuple[int, str, EnvGroupBuilder]],
    completer: _SeededCompleter,
    policy: RolloutPolicy,
    seed: int,
    concurrency: int,
    finished: Callable[[ItemRecord], None],
    decode: Callable[[np.ndarray], str],
) -> None:
    pending = iter(todo)

    async def worker() -> None:
        for index, item_id, builder in pending:  # a shared iterator: each item is taken by one worker
            seeded = _SeededBuilder(builder, seed, item_id)
            group = await rollout_group(seeded, completer, policy, f"item/{item_id}")
            finished(item_record(item_id, index, group, decode))

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(todo)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Bar(Protocol):
    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


def _progress_bar(total: int, initial: int, name: str, enabled: bool) -> _Bar:
    from tqdm import tqdm

    bar: _Bar = tqdm(total=total, initial=initial, desc=name, unit="item", file=sys.stderr, disable=not enabled)
    return bar


def run_benchmark(
    name: str,
    builders: Sequence[EnvGroupBuilder],
    sampler: SamplingClient,
    *,
    out_dir: str | os.PathLike[str],
    concurrency: int = 8,
    resume: bool = True,
    seed: int = 0,
    progress: bool = False,
    policy: RolloutPolicy | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    options: Mapping[str, OptionValue] | None = None,
) -> BenchmarkResult:
    """Play every item of ``builders`` with ``sampler`` and summarize (see the module docstring).

    Args:
        name: the benchmark's name (the summary's and the :class:`EvalResult`'s).
        builders: the items (a :class:`BenchmarkItem` names its id; any other builder is named by position).
        sampler: any sampling client (local, served, Tinker); its tokenizer decodes the transcripts.
        out_dir: where ``benchmark.json``, ``transcripts.jsonl`` and ``summary.json`` go.
        concurrency: items played at once.
        resume: keep the items an earlier run in ``out_dir`` finished (same settings required); ``False``
            deletes its transcripts and starts over.
        seed: the sampling seed.
        progress: draw a tqdm bar on stderr.
        policy: rollout timeouts and failure handling (default: fail fast, no timeouts; its
            ``max_concurrency`` bounds the episodes of one item).
        temperature / max_tokens: sampling of every action (``max_tokens`` caps the environment's own limit).
        options: what the items were made with (recorded in the settings; a resume must match).

    Raises:
        BenchmarkResumeError: ``out_dir`` holds a run with other settings (naming each changed field).
        RolloutError: an episode failed under ``on_failure="fail_fast"`` (the items finished so far are saved).
    """
    where = "run_benchmark"
    require_type(name, str, where, "name")
    concurrency = positive_int(concurrency, where, "concurrency")
    int_at_least(seed, where, "seed", 0)
    in_range(temperature, where, "temperature", low=0.0)
    int_at_least(max_tokens, where, "max_tokens", 1, allow_none=True)
    policy = policy if policy is not None else RolloutPolicy(max_concurrency=64)
    require_type(policy, RolloutPolicy, where, "policy")
    if not builders:
        raise ConfigError(where, "builders", "is empty.", "give the benchmark at least one item.")
    ids = _item_ids(builders)
    settings = BenchmarkSettings(
        name=name,
        model=sampler.get_base_model(),
        seed=seed,
        temperature=float(temperature),
        max_tokens=max_tokens,
        items=len(ids),
        items_digest=hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()[:16],
        options=dict(options or {}),
    )
    directory = pathlib.Path(out_dir)
    done = _prepare(directory, settings, ids, resume)
    finished_ids = {record.id for record in done}
    todo = [(index, item_id, builders[index]) for index, item_id in enumerate(ids) if item_id not in finished_ids]
    records: dict[str, ItemRecord] = {record.id: record for record in done}
    transcripts = directory / TRANSCRIPTS_FILE
    bar = _progress_bar(len(ids), len(done), name, progress)
    tokenizer = sampler.get_tokenizer()

    def finished(record: ItemRecord) -> None:
        line = to_json(record)
        _append_line(transcripts, line)
        records[record.id] = from_json(line, ItemRecord)  # as a resumed run will read it back
        bar.update(1)

    completer = _SeededCompleter(sampler, float(temperature), max_tokens)
    try:
        if todo:
            asyncio.run(_play_all(todo, completer, policy, seed, concurrency, finished, tokenizer.decode))
    finally:
        bar.close()
    ordered = tuple(records[item_id] for item_id in ids)
    result = _result(name, settings, ordered, len(done), len(todo), directory)
    atomic_write_text(directory / SUMMARY_FILE, json.dumps(result.summary(), indent=2, allow_nan=False) + "\n")
    return result


def _result(
    name: str,
    settings: BenchmarkSettings,
    items: tuple[ItemRecord, ...],
    resumed: int,
    ran: int,
    out_dir: pathlib.Path,
) -> BenchmarkResult:
    scored = [item for item in items if item.reward is not None]
    rewards = np.array([item.reward for item in scored], dtype=np.float64)
    mean, stderr = mean_and_stderr(rewards)
    return BenchmarkResult(
        name=name,
        settings=settings,
        items=items,
        n=len(scored),
        n_failed=len(items) - len(scored),
        mean=mean,
        stderr=stderr,
        metrics=mean_metrics([item.metrics for item in scored]),
        resumed=resumed,
        ran=ran,
        out_dir=out_dir,
    )
