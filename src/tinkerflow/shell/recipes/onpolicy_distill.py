"""On-policy distillation (shell): the student samples, the teacher scores the samples, RL's loop trains.

:func:`prepare_distill` reads and checks the prompts (chat rows; a bad row is an error naming ``file:line``) before
any work; :func:`run_distill` opens the teacher (the KL reference of :meth:`DistillConfig.rl_config
<tinkerflow.rl.distill_config.DistillConfig.rl_config>`, refused when it tokenizes differently from the student),
builds the prompt datasets (:func:`tinkerflow.rl.distill.prompt_dataset`; the held-out one scores its answers with
the teacher, so the RL loop's held-out reward is minus the per-token reverse KL) or the environment's datasets (the
reward mixed in), and runs :func:`~tinkerflow.shell.recipes.rl.run_rl` with ``kl_mode="distillation"``: each
sampled token's advantage gets ``-kl_coef * (log p_student - log p_teacher)`` (metric ``teacher_kl``). The run
directory also gets ``teacher_kl.html`` (training and held-out KL per step) and ``distill.json`` (the result).
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
from collections.abc import Callable
from typing import TextIO

import attrs

from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.render import Renderer
from tinkerflow.rl.distill import prompt_dataset, prompt_messages
from tinkerflow.rl.distill_config import DistillConfig
from tinkerflow.rl.types import RLDataset
from tinkerflow.serde import to_json
from tinkerflow.shell.backends.protocol import Backend
from tinkerflow.shell.io.charts import metrics_chart_html
from tinkerflow.shell.io.data import load_chat_jsonl
from tinkerflow.shell.io.run_dir import MetricsLog, atomic_write_text
from tinkerflow.shell.recipes.onpolicy_reference import open_reference
from tinkerflow.shell.recipes.rl import RLResult, environment_datasets, run_rl

__all__ = ["SUMMARY_FILE", "DistillData", "DistillResult", "kl_rows", "prepare_distill", "read_prompts", "run_distill"]

#: The finished run's :class:`DistillResult`, in its run directory.
SUMMARY_FILE = "distill.json"

Prompt = tuple[Message, ...]


@attrs.frozen
class DistillData:
    """The checked prompts of a run (empty with ``env``: the environment makes its own)."""

    train: tuple[Prompt, ...]
    test: tuple[Prompt, ...]


@attrs.frozen
class DistillResult:
    """What a distillation run reports.

    Attributes:
        policy: the RL loop's result (checkpoints; its held-out reward is ``-KL`` with prompts).
        held_out_kl_before / held_out_kl_after: per-token reverse KL of the student's held-out answers to the
            teacher, before and after training (``None`` with ``env`` or without ``test_prompts``).
    """

    policy: RLResult
    held_out_kl_before: float | None
    held_out_kl_after: float | None


def read_prompts(path: str, field: str, where: str = "DistillConfig") -> tuple[Prompt, ...]:
    """The prompts of the chat rows in ``path`` (:func:`~tinkerflow.rl.distill.prompt_messages` of each); a row
    with no prompt is a ``ConfigError`` naming ``where.field``, the file and the row."""
    conversations, _ = load_chat_jsonl(path, "raise")
    prompts: list[Prompt] = []
    for line, conversation in enumerate(conversations, start=1):
        try:
            prompts.append(prompt_messages(conversation))
        except ValidationError as error:
            raise ConfigError("DistillConfig", field, f"{path}: row {line}: {error.problem}", error.fix) from error
    if not prompts:
        raise ConfigError(where, field, f"{path}: holds no prompt.", "give at least one chat row.")
    return tuple(prompts)


def prepare_distill(config: DistillConfig) -> DistillData:
    """The prompts of ``config`` read and checked (none with ``env``)."""
    if config.prompts is None:
        return DistillData((), ())
    test = read_prompts(config.test_prompts, "test_prompts") if config.test_prompts is not None else ()
    return DistillData(read_prompts(config.prompts, "prompts"), test)


def _negated(value: float | None) -> float | None:
    return None if value is None else -value


def run_distill(
    config: DistillConfig,
    backend: Backend,
    renderer: Renderer,
    *,
    data: DistillData | None = None,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
) -> DistillResult:
    """Run (or resume) on-policy distillation as ``config`` says; see the module docstring."""
    rl_config = config.rl_config()
    data = data if data is not None else prepare_distill(config)
    with contextlib.ExitStack() as stack:
        teacher = open_reference(rl_config, backend, None, {}, stack)
        train: RLDataset
        test: RLDataset | None
        if config.prompts is not None:
            make = functools.partial(
                prompt_dataset, renderer=renderer, group_size=config.group_size, seed=config.seed,
                max_tokens=config.max_tokens,
            )  # fmt: skip
            train = make(data.train, batch_size=config.groups_per_batch, steps=config.steps)
            held_out = data.test[: max(config.eval_groups, 1)]
            test = make(held_out, batch_size=len(held_out), steps=1, teacher=teacher.sampler) if held_out else None
        else:
            train, test = environment_datasets(rl_config, renderer)
        if out is not None:
            out.write(f"on-policy distillation of {config.base_model} from the {teacher.label}\n")
        policy = run_rl(
            rl_config,
            backend,
            train,
            decode=renderer.tokenizer.decode,
            test_dataset=test,
            out=out,
            after_step=after_step,
            renderer=renderer,
            reference=teacher.sampler,
        )
    measured = config.prompts is not None and bool(data.test)
    result = DistillResult(
        policy=policy,
        held_out_kl_before=_negated(policy.eval_reward_before) if measured else None,
        held_out_kl_after=_negated(policy.eval_reward_after) if measured else None,
    )
    atomic_write_text(pathlib.Path(config.run_dir) / SUMMARY_FILE, to_json(result, indent=2))
    _kl_chart(config.run_dir, result if measured else None, config.steps)
    return result


def kl_rows(run_dir: str, result: DistillResult | None, steps: int) -> list[dict[str, object]]:
    """The run's metrics rows with ``held_out_teacher_kl`` (minus the held-out reward, when ``result`` says it was
    measured), and the KL after training as a last row at step ``steps``."""
    rows = [dict(row) for row in MetricsLog.read(pathlib.Path(run_dir) / "metrics.jsonl")]
    if result is None:
        return rows
    for row in rows:
        reward = row.get("eval_reward_mean")
        if isinstance(reward, int | float):
            row["held_out_teacher_kl"] = -float(reward)
    if result.held_out_kl_after is not None:
        rows.append({"step": steps, "held_out_teacher_kl": result.held_out_kl_after})
    return rows


def _kl_chart(run_dir: str, result: DistillResult | None, steps: int) -> None:
    """``teacher_kl.html``: the training batches' and the held-out per-token reverse KL to the teacher."""
    page = metrics_chart_html(
        kl_rows(run_dir, result, steps), ["teacher_kl", "held_out_teacher_kl"], "Per-token reverse KL to the teacher"
    )
    atomic_write_text(pathlib.Path(run_dir) / "teacher_kl.html", page)
