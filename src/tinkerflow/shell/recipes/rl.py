"""The RL recipe (shell): roll out groups, center advantages, assemble datums, train; sync or off-policy async.

Per step ``n`` (everything that turns data into data is a pure function of :mod:`tinkerflow.rl`; the steps are
driven by the shared loop, :func:`tinkerflow.shell.loop.run_steps`, one step at a time):

1. the weights after ``n`` steps become a sampler; it rolls out batch ``n + K`` in the background, where ``K``
   is the staleness (0 in ``sync`` mode: on-policy; ``max_staleness`` in ``async`` mode, so sampling of later
   batches overlaps training of this one and no sample comes from weights more than ``K`` steps old;
   :mod:`tinkerflow.shell.recipes.rl_sampling`);
2. batch ``n``'s groups (rolled out earlier, or just now in sync mode) get group-centered advantages
   (:func:`~tinkerflow.rl.advantages.compute_advantages`); constant groups are kept or dropped by policy and a
   step with nothing left is *skipped* (logged, no optimizer step: Adam's momentum would move the weights);
3. trajectories become datums by sequence extension (:func:`~tinkerflow.rl.assembly.assemble_batch`), with an
   optional KL term against the reference ``kl_reference`` names (the initial weights, the base model, a checkpoint
   or another model: :mod:`~tinkerflow.shell.recipes.onpolicy_reference`): the centered penalty
   (:func:`~tinkerflow.rl.kl.kl_penalty`) or, with ``kl_mode="distillation"``, the negative reverse KL to a
   teacher (:func:`~tinkerflow.rl.kl.reverse_kl_advantages`, on-policy distillation); then the loss inputs of the
   configured loss;
4. ``substeps`` forward_backward + optim_step pairs are submitted back to back, then awaited;
5. metrics (rewards per tag, failures by kind, loss), transcripts, and every ``save_every`` steps a checkpoint
   with the data position and the sampler paths that in-flight batches need, so a resumed run continues at the
   next unfinished batch with the same data and sampling weights (no replayed batch, no duplicated metrics row).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

import attrs
import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.render import Renderer
from tinkerflow.rl import envs
from tinkerflow.rl.advantages import AdvantageConfig, compute_advantages
from tinkerflow.rl.assembly import RLBatch, assemble_batch
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.envs.base import ProblemOptions
from tinkerflow.rl.kl import kl_penalty, reference_prompts, reverse_kl_advantages
from tinkerflow.rl.loss_inputs import (
    CISPOLoss,
    DROLoss,
    GSPOLoss,
    ImportanceSamplingLoss,
    LossConfig,
    PPOLoss,
    StableReinforceLoss,
    loss_datums,
)
from tinkerflow.rl.metrics import rollout_metrics
from tinkerflow.rl.transcripts import EpisodeTranscript, episode_transcripts, transcripts_html
from tinkerflow.rl.types import RLDataset, TrajectoryGroup
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient, TrainingClient
from tinkerflow.shell.evals.inline import InlineEvals
from tinkerflow.shell.io.run import Run
from tinkerflow.shell.io.run_dir import MetricsLog, atomic_write_text
from tinkerflow.shell.io.sinks import MetricsSink
from tinkerflow.shell.loop import Finish, MetricRow, StepPlan, run_steps
from tinkerflow.shell.recipes import rl_custom, rl_data
from tinkerflow.shell.recipes.onpolicy_reference import open_reference
from tinkerflow.shell.recipes.rl_sampling import RolloutSampling
from tinkerflow.shell.sandbox import PythonSandbox, TimedToolExecutor
from tinkerflow.training import ForwardBackwardOutput

__all__ = ["ENVIRONMENTS", "RLResult", "environment_datasets", "loss_config", "run_rl"]


@attrs.frozen
class RLResult:
    """What a finished (or resumed-and-finished) RL run reports."""

    steps: int
    eval_reward_before: float | None
    eval_reward_after: float | None
    final_checkpoint: str
    sampler_checkpoint: str
    evals_after: Mapping[str, float] = attrs.field(factory=dict)


#: Environments ``RLConfig.env`` can name: the factory of their training and held-out datasets.
ENVIRONMENTS: tuple[str, ...] = ("arithmetic", "guess_number", "math_boxed", "tool_use", "code")


def environment_datasets(config: RLConfig, renderer: Renderer) -> tuple[RLDataset, RLDataset | None]:
    """The training dataset (``steps`` batches of ``groups_per_batch`` groups) and the held-out one of the
    environment ``config.env``, built with ``config.env_args``; the held-out problems use another seed."""
    kwargs: dict[str, object] = {"max_tokens": config.max_tokens, **config.env_args}
    common: dict[str, object] = {"group_size": config.group_size, **kwargs}
    generated: dict[str, Callable[..., RLDataset]] = {
        "arithmetic": envs.arithmetic.dataset,
        "guess_number": envs.guess_number.dataset,
    }
    if rl_custom.is_import_path(config.env):
        return rl_custom.custom_datasets(config, renderer)
    try:
        if config.env in ("tool_use", "code"):  # agents: tools run with a per-call timeout, code in the sandbox
            module = envs.tool_use if config.env == "tool_use" else envs.code
            extra: dict[str, object] = {"executor": TimedToolExecutor()}
            if config.env == "code":
                extra["runner"] = PythonSandbox()
            agent_factory: Callable[..., RLDataset] = module.dataset
            train = agent_factory(
                renderer, batch_size=config.groups_per_batch, n_batches=config.steps, seed=config.seed,
                split="train", **extra, **common,
            )  # fmt: skip
            test = agent_factory(
                renderer, batch_size=max(config.eval_groups, 1), n_batches=1, seed=config.seed + 7919,
                split="test", **extra, **common,
            )  # fmt: skip
            return train, test
        if config.env in generated:
            factory = generated[config.env]
            train = factory(
                renderer, batch_size=config.groups_per_batch, n_batches=config.steps, seed=config.seed, **common
            )
            test = factory(
                renderer, batch_size=max(config.eval_groups, 1), n_batches=1, seed=config.seed + 7919, **common
            )
            return train, test
        if config.env == "math_boxed" and "data" in config.env_args:
            options = {key: value for key, value in kwargs.items() if key not in rl_data.DATA_KEYS}
            return rl_data.problem_datasets(config, renderer, ProblemOptions(**options))  # type: ignore[arg-type]  # ProblemOptions checks the values
        if config.env == "math_boxed":
            math_factory: Callable[..., RLDataset] = envs.math_boxed.dataset
            return math_factory(
                renderer, batch_size=config.groups_per_batch, seed=config.seed, epochs=1, **common
            ), None
    except TypeError as error:  # an env_args key the factory does not take
        raise ConfigError(
            "RLConfig", "env_args", f"{error}.", f"see the {config.env} environment's options."
        ) from error
    raise ConfigError(
        "RLConfig",
        "env",
        f"unknown environment {config.env!r}.",
        f"use one of {ENVIRONMENTS}, or name your own dataset factory as 'package.module:factory'.",
    )


def loss_config(config: RLConfig) -> LossConfig:
    """The loss record the config names (``stable_reinforce`` needs provenance spans on every datum: the backend's
    samplers must give sequence ids)."""
    if config.loss == "importance_sampling":
        return ImportanceSamplingLoss()
    clip = {"clip_low": config.clip_low, "clip_high": config.clip_high}
    if config.loss == "ppo":
        return PPOLoss(**clip)
    if config.loss == "cispo":
        return CISPOLoss(**clip)
    if config.loss == "gspo":
        return GSPOLoss(**clip)
    if config.loss == "stable_reinforce":
        return StableReinforceLoss()
    return DROLoss(beta=config.dro_beta)


def _split(items: Sequence[Datum], parts: int) -> list[list[Datum]]:
    """``items`` in ``parts`` contiguous, nearly equal, non-empty chunks (fewer when there are fewer items)."""
    count = min(parts, len(items))
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return [list(items[bounds[k] : bounds[k + 1]]) for k in range(count)]


def run_rl(
    config: RLConfig,
    backend: Backend,
    dataset: RLDataset,
    *,
    decode: Callable[[np.ndarray], str],
    test_dataset: RLDataset | None = None,
    out: TextIO | None = None,
    after_step: Callable[[int], None] | None = None,
    sinks: Sequence[MetricsSink] | None = None,
    renderer: Renderer | None = None,
    reference: SamplingClient | None = None,
) -> RLResult:
    """Run (or resume) RL as ``config`` says on ``dataset``'s environment groups; see the module docstring.

    ``decode`` turns token ids into text for transcripts; ``test_dataset`` (optional) is rolled out before,
    every ``eval_every`` steps and after training (``eval_reward_mean``). ``after_step(step)`` runs once step
    ``step``'s metrics are logged (tests use it to kill a run). ``sinks`` receive every metrics row too; ``None``
    makes the ones ``config.log_to`` asks for, ``()`` none. ``renderer`` renders the prompts of ``config.evals``
    (required when there are any). ``reference``: the KL reference already opened (the distillation recipe's
    teacher, which its held-out environment shares); ``None`` opens the one ``config.kl_reference`` names.
    """
    if config.evals and renderer is None:
        raise ConfigError("run_rl", "renderer", "config.evals needs the renderer of the policy.", "pass renderer=.")
    if len(dataset) == 0:
        raise TinkerflowError("run_rl: the dataset has no batches.")
    total = config.steps
    run = Run.start(
        config.run_dir, config, log_to=config.log_to, sinks=sinks, total_steps=total, out=out, progress_label="reward"
    )
    with contextlib.ExitStack() as stack:
        stack.callback(run.close)
        if not run.resumed:
            run.out.write(
                f"RL on {config.env} with {config.base_model} (LoRA rank {config.lora_rank}): {total} steps of "
                f"{config.groups_per_batch} groups x {config.group_size}, {config.loss}, {config.mode} mode\n"
            )
        client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
        extra: dict[str, object] = json.loads(run.state.extra_json) if run.state is not None else {}
        reference_path: str | None = None
        if reference is None and config.kl_coef > 0:
            opened = open_reference(config, backend, client, extra, stack)
            reference_path, reference = opened.recorded_path, opened.sampler
            if not run.resumed:
                run.out.write(f"KL {config.kl_mode} (coef {config.kl_coef}) against the {opened.label}\n")
        transcripts = stack.enter_context(
            contextlib.closing(MetricsLog(run.run_dir / "transcripts.jsonl", resume_step=run.start_step))
        )
        recorded = extra.get("sampler_paths", {})
        paths = {int(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
        sampling = RolloutSampling(config, client, dataset, test_dataset, start=run.start_step, recorded=paths)
        stack.callback(sampling.close)
        step = _RLStep(config, client, sampling, reference, transcripts, decode, run.out)
        sampling.relaunch(run.start_step, total)
        evals = _inline_evals(config, backend, renderer)
        run_steps(
            run,
            client,
            evals.wrap(client, step.submit, run.start_step),
            total=total,
            learning_rate=config.learning_rate,
            lr_schedule=None,
            eval_every=config.eval_every,
            save_every=config.save_every,
            data_state=lambda done: json.dumps({"next_batch": done}),
            extra_state=lambda done: _extra_state(sampling.needed_paths(done), reference_path),
            after_step=after_step,
            pipelined=False,
        )
        final_path = client.save_weights_for_sampler("final").result()
        eval_after = sampling.evaluate(client.create_sampling_client(final_path).result(), total)
        evals_after = evals.final(run, client, total)
    result = _report(run, config, step.eval_before, eval_after, final_path)
    run.out.write(evals.report(config.run_dir, evals_after))
    return attrs.evolve(result, evals_after=evals_after)


def _inline_evals(config: RLConfig, backend: Backend, renderer: Renderer | None) -> InlineEvals:
    """The run's ``evals`` (none without a renderer: :func:`run_rl` refuses evals without one)."""
    return InlineEvals(
        config.evals if renderer is not None else (), renderer, backend=backend, base_model=config.base_model,
        run_dir=config.run_dir, seed=config.seed, eval_every=config.eval_every,
    )  # fmt: skip


def _extra_state(sampler_paths: Mapping[str, str], reference_path: str | None) -> str:
    extra: dict[str, object] = {"sampler_paths": dict(sampler_paths)}
    if reference_path is not None:
        extra["reference"] = reference_path
    return json.dumps(extra)


def _reference_logprobs(sampler: SamplingClient, batch: RLBatch) -> list[np.ndarray]:
    futures = [sampler.compute_logprobs(prompt) for prompt in reference_prompts(batch)]
    out: list[np.ndarray] = []
    for future, datum in zip(futures, batch.datums, strict=True):
        scores = np.asarray(future.result(), dtype=np.float32)
        out.append(scores[1 : 1 + datum.length])
    return out


class _RLStep:
    """One RL step for the shared loop: sample (or take the batch rolled out earlier), train, build the row."""

    def __init__(
        self,
        config: RLConfig,
        client: TrainingClient,
        sampling: RolloutSampling,
        reference: SamplingClient | None,
        transcripts: MetricsLog,
        decode: Callable[[np.ndarray], str],
        out: TextIO,
    ) -> None:
        self.config, self.client, self.sampling, self.reference = config, client, sampling, reference
        self.transcripts, self.decode, self.out = transcripts, decode, out
        self.advantages = AdvantageConfig(
            normalize_std=config.normalize_advantages, constant_groups=config.constant_groups
        )
        self.loss = loss_config(config)
        self.eval_before: float | None = None

    def submit(self, plan: StepPlan) -> Finish:
        """Run step ``plan.step`` to the end (RL steps are not pipelined) and return its row."""
        began = time.monotonic()
        step, config, sampling = plan.step, self.config, self.sampling
        sampling.version = step
        sampler = sampling.sampler_for(step)
        row: dict[str, float | int | str | None] = {}
        if step == 0:
            self.eval_before = sampling.evaluate(sampler, 0)
            if self.eval_before is not None:
                self.out.write(f"held-out reward before training: {self.eval_before:.4f}\n")
        if step + sampling.staleness < config.steps:
            sampling.launch(step + sampling.staleness, sampler)
        eval_reward = sampling.evaluate(sampler, step) if plan.evaluate else None
        groups = sampling.take(step)
        sampled_at = time.monotonic()
        row.update(self._train(step, groups, plan))
        row["sampling_s"] = sampled_at - began
        if "train_s" in row:
            row["train_s"] = time.monotonic() - sampled_at
        if eval_reward is not None:
            row["eval_reward_mean"] = eval_reward
        if step == 0 and self.eval_before is not None:
            row["eval_reward_mean"] = self.eval_before
        reward = row.get("reward/mean", math.nan)
        result: tuple[MetricRow, float] = (row, float(reward) if isinstance(reward, int | float) else math.nan)
        return lambda: result

    def _train(self, step: int, groups: list[TrajectoryGroup], plan: StepPlan) -> dict[str, float | int | str | None]:
        """Advantages, transcripts, datums and the optimizer steps of one batch; the row's metrics in order."""
        advantages = compute_advantages(groups, self.advantages)
        row: dict[str, float | int | str | None] = dict(rollout_metrics(groups, advantages))
        row.update({"staleness": min(self.sampling.staleness, step), "sampling_s": 0.0})
        advantage_of = {
            tid: float(a)
            for kept in advantages.kept
            for tid, a in zip(kept.trajectory_ids, kept.advantages_G, strict=True)
        }
        for episode in episode_transcripts(step, groups, self.decode, advantage_of):
            self.transcripts.log(step, {"episode": to_json(episode)})
        if not advantages.kept:
            row.update({"skipped_step": 1, "datums": 0})
            return row
        batch = assemble_batch(groups, advantages)
        if self.reference is not None:
            add_kl = reverse_kl_advantages if self.config.kl_mode == "distillation" else kl_penalty
            batch, kl_metrics = add_kl(
                batch, _reference_logprobs(self.reference, batch), self.config.kl_coef, self.config.kl_discount
            )
            row.update(kl_metrics)
        datums = loss_datums(batch, self.loss)
        steps: list[APIFuture[Mapping[str, float]]] = []
        losses: list[APIFuture[ForwardBackwardOutput]] = []
        for chunk in _split(datums, self.config.substeps):
            losses.append(self.client.forward_backward(chunk, self.loss.loss_fn, self.loss.config()))
            steps.append(self.client.optim_step(plan.adam))
        loss_sum = sum(future.result().metrics.get("loss:sum", math.nan) for future in losses)
        for optim in steps:
            optim.result()
        row.update({"skipped_step": 0, "datums": len(datums), "loss_sum": loss_sum, "train_s": 0.0})
        return row


def _report(
    run: Run, config: RLConfig, eval_before: float | None, eval_after: float | None, final_path: str
) -> RLResult:
    """Transcripts page, reward chart and the before/after summary of a finished run."""
    episodes = [
        from_json(str(row["episode"]), EpisodeTranscript) for row in MetricsLog.read(run.run_dir / "transcripts.jsonl")
    ]
    atomic_write_text(run.run_dir / "transcripts.html", transcripts_html(episodes, f"RL rollouts: {config.env}"))
    run.write_chart(["reward/mean", "eval_reward_mean"], f"RL reward: {config.env}", "reward.html")
    if eval_after is not None:
        before = f"{eval_before:.4f} -> " if eval_before is not None else ""
        run.out.write(f"held-out reward: {before}{eval_after:.4f} after training\n")
    return RLResult(
        steps=config.steps,
        eval_reward_before=eval_before,
        eval_reward_after=eval_after,
        final_checkpoint=run.last_checkpoint,
        sampler_checkpoint=final_path,
    )
