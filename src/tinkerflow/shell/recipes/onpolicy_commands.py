"""The bodies of ``tinkerflow distill`` and ``tinkerflow rlhf`` (shell): what each loads and checks before any work,
and what it trains and reports. :mod:`tinkerflow.cli` gives them its shared flow (``execute``: sinks checked,
backend made, renderer built, data prepared, then training unless ``--dry-run``)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from tinkerflow.chat import Conversation
from tinkerflow.config import RunConfig
from tinkerflow.preference.records import LabeledComparison
from tinkerflow.render import Renderer
from tinkerflow.rl.distill_config import DistillConfig
from tinkerflow.rl.rlhf_config import RLHFConfig
from tinkerflow.shell.backends.protocol import Backend

__all__ = ["Execute", "run_distill_command", "run_rlhf_command"]

D = TypeVar("D")


class Execute(Protocol):
    """The command line's shared flow (:func:`tinkerflow.cli._execute`)."""

    def __call__(
        self,
        config: RunConfig,
        prepare: Callable[[Renderer], tuple[D, str]],
        train: Callable[[Backend, Renderer, D], str],
        dry_run: bool,
    ) -> int: ...


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_distill_command(config: DistillConfig, dry_run: bool, execute: Execute) -> int:
    """``tinkerflow distill CONFIG``: the prompts checked (or the environment's datasets made), then the run."""
    from tinkerflow.shell.recipes.onpolicy_distill import DistillData, prepare_distill, run_distill

    def prepare(renderer: Renderer) -> tuple[DistillData, str]:
        from tinkerflow.shell.evals.inline import check_evals
        from tinkerflow.shell.recipes.rl import environment_datasets

        data = prepare_distill(config)
        if config.env is not None:
            train_set, _ = environment_datasets(config.rl_config(), renderer)
            what = f"environment {config.env}: {len(train_set)} training batches (reward mixed in)"
        else:
            what = f"data: {len(data.train)} training and {len(data.test)} held-out prompts"
        teacher = config.teacher_model if config.teacher_model is not None else config.teacher_checkpoint
        line = f"{what}; teacher {teacher}; renderer {renderer.name}{check_evals(config.evals)}"
        return data, line

    def train(backend: Backend, renderer: Renderer, data: DistillData) -> str:
        result = run_distill(config, backend, renderer, data=data, out=sys.stdout)
        lines = [
            f"\nrun directory: {config.run_dir} (metrics.jsonl, teacher_kl.html, reward.html, transcripts.html, "
            "checkpoints)"
        ]
        if result.held_out_kl_before is not None:
            lines.append(
                f"held-out per-token reverse KL to the teacher: before {_rate(result.held_out_kl_before)} -> "
                f"after {_rate(result.held_out_kl_after)}"
            )
        elif result.policy.eval_reward_before is not None:
            before, after = result.policy.eval_reward_before, result.policy.eval_reward_after
            lines.append(f"held-out reward: before {_rate(before)} -> after {_rate(after)}")
        return "\n".join(lines)

    return execute(config, prepare, train, dry_run)


def _prompts(config: RLHFConfig, train: Sequence[LabeledComparison]) -> list[Conversation]:
    """The policy's prompts: the ``prompts`` file's, else the distinct prompts of the training comparisons."""
    if config.prompts is None:
        return list(dict.fromkeys(item.comparison.prompt for item in train))
    from tinkerflow.shell.recipes.onpolicy_distill import read_prompts

    return [Conversation(messages=prompt) for prompt in read_prompts(config.prompts, "prompts", "RLHFConfig")]


def run_rlhf_command(config: RLHFConfig, dry_run: bool, execute: Execute) -> int:
    """``tinkerflow rlhf CONFIG``: the comparisons and prompts checked, then both stages."""
    from tinkerflow.shell.io.data import load_preference_jsonl
    from tinkerflow.shell.recipes.rlhf import run_rlhf

    Data = tuple[list[LabeledComparison], list[LabeledComparison], list[Conversation]]

    def prepare(renderer: Renderer) -> tuple[Data, str]:
        from tinkerflow.shell.evals.inline import check_evals

        train, _ = load_preference_jsonl(config.comparisons, "raise")
        test = load_preference_jsonl(config.test_comparisons, "raise")[0] if config.test_comparisons else []
        prompts = _prompts(config, train)
        line = (
            f"data: {len(train)} training and {len(test)} held-out comparisons, {len(prompts)} prompts; "
            f"renderer {renderer.name}{check_evals(config.evals)}"
        )
        return (train, test, prompts), line

    def train(backend: Backend, renderer: Renderer, data: Data) -> str:
        comparisons, test, prompts = data
        result = run_rlhf(
            config.reward_model_config(), config.policy_config(), backend, renderer, comparisons, test, prompts,
            both_orders=config.both_orders, format_coef=config.format_coef, opponents=config.opponents,
            eval_limit=config.eval_limit, out=sys.stdout,
        )  # fmt: skip
        judge = result.reward_model
        return "\n".join(
            [
                f"\nrun directory: {config.run_dir} (reward_model/, policy/)",
                f"judge held-out accuracy: {_rate(judge.accuracy_before.accuracy)} -> "
                f"{_rate(judge.accuracy_after.accuracy)}{' (reused)' if result.reward_model_reused else ''}",
                f"policy win rate vs chosen (judged): {_rate(result.win_rate_before)} -> "
                f"{_rate(result.win_rate_after)}",
            ]
        )

    return execute(config, prepare, train, dry_run)
