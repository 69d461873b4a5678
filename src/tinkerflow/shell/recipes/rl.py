"""The RL loop (shell): roll out groups, center advantages, assemble datums, train; sync or off-policy async.

Per step ``n`` (everything that turns data into data is a pure function of :mod:`tinkerflow.rl`):

1. the weights after ``n`` steps become a sampler; it rolls out batch ``n + K`` in the background, where ``K``
   is the staleness (0 in ``sync`` mode: on-policy; ``max_staleness`` in ``async`` mode, so sampling of later
   batches overlaps training of this one and no sample comes from weights more than ``K`` steps old);
2. batch ``n``'s groups (rolled out earlier, or just now in sync mode) get group-centered advantages
   (:func:`~tinkerflow.rl.advantages.compute_advantages`); constant groups are kept or dropped by policy and a
   step with nothing left is *skipped* (logged, no optimizer step: Adam's momentum would move the weights);
3. trajectories become datums by sequence extension (:func:`~tinkerflow.rl.assembly.assemble_batch`), with an
   optional KL penalty against the initial weights, then the loss inputs of the configured loss;
4. ``substeps`` forward_backward + optim_step pairs are submitted back to back, then awaited;
5. metrics (rewards per tag, failures by kind, loss), transcripts, and every ``save_every`` steps a checkpoint
   with the data position and the sampler paths that in-flight batches need, so a resumed run continues at the
   next unfinished batch with the same data and sampling weights (the shared :class:`~tinkerflow.shell.io.run.Run`
   machinery: no replayed batch, no duplicated metrics row).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TextIO, TypeVar

import attrs
import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.render import Renderer
from tinkerflow.rl import envs
from tinkerflow.rl.advantages import AdvantageConfig, compute_advantages
from tinkerflow.rl.assembly import RLBatch, assemble_batch
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.kl import kl_penalty, reference_prompts
from tinkerflow.rl.loss_inputs import CISPOLoss, DROLoss, ImportanceSamplingLoss, LossConfig, PPOLoss, loss_datums
from tinkerflow.rl.metrics import rollout_metrics
from tinkerflow.rl.transcripts import EpisodeTranscript, episode_transcripts, transcripts_html
from tinkerflow.rl.types import EnvGroupBuilder, RLDataset, TrajectoryGroup
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture, Backend, SamplingClient
from tinkerflow.shell.completers import BatchingTokenCompleter
from tinkerflow.shell.io.run import MetricsSink, Run
from tinkerflow.shell.io.run_dir import MetricsLog, atomic_write_text
from tinkerflow.shell.rollouts import RolloutPolicy, rollout_batch
from tinkerflow.training import AdamParams, ForwardBackwardOutput

__all__ = ["ENVIRONMENTS", "RLResult", "environment_datasets", "loss_config", "run_rl"]

T = TypeVar("T")


@attrs.frozen
class RLResult:
    """What a finished (or resumed-and-finished) RL run reports."""

    steps: int
    eval_reward_before: float | None
    eval_reward_after: float | None
    final_checkpoint: str
    sampler_checkpoint: str


#: Environments ``RLConfig.env`` can name: the factory of their training and held-out datasets.
ENVIRONMENTS: tuple[str, ...] = ("arithmetic", "guess_number", "math_boxed")


def environment_datasets(config: RLConfig, renderer: Renderer) -> tuple[RLDataset, RLDataset | None]:
    """The training dataset (``steps`` batches of ``groups_per_batch`` groups) and the held-out one of the
    environment ``config.env``, built with ``config.env_args``; the held-out problems use another seed."""
    kwargs: dict[str, object] = {"max_tokens": config.max_tokens, **config.env_args}
    common: dict[str, object] = {"group_size": config.group_size, **kwargs}
    generated: dict[str, Callable[..., RLDataset]] = {
        "arithmetic": envs.arithmetic.dataset,
        "guess_number": envs.guess_number.dataset,
    }
    try:
        if config.env in generated:
            factory = generated[config.env]
            train = factory(
                renderer, batch_size=config.groups_per_batch, n_batches=config.steps, seed=config.seed, **common
            )
            test = factory(
                renderer, batch_size=max(config.eval_groups, 1), n_batches=1, seed=config.seed + 7919, **common
            )
            return train, test
        if config.env == "math_boxed":
            math_factory: Callable[..., RLDataset] = envs.math_boxed.dataset
            return math_factory(
                renderer, batch_size=config.groups_per_batch, seed=config.seed, epochs=1, **common
            ), None
    except TypeError as error:  # an env_args key the factory does not take
        raise ConfigError(
            "RLConfig", "env_args", f"{error}.", f"see the {config.env} environment's options."
        ) from error
    raise ConfigError("RLConfig", "env", f"unknown environment {config.env!r}.", f"use one of {ENVIRONMENTS}.")


def loss_config(config: RLConfig) -> LossConfig:
    """The loss record the config names."""
    if config.loss == "importance_sampling":
        return ImportanceSamplingLoss()
    if config.loss == "ppo":
        return PPOLoss(clip_low=config.clip_low, clip_high=config.clip_high)
    if config.loss == "cispo":
        return CISPOLoss(clip_low=config.clip_low, clip_high=config.clip_high)
    return DROLoss(beta=config.dro_beta)


class _EventLoopThread:
    """An asyncio loop on a daemon thread: rollouts run there while the main thread trains."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tinkerflow-rollouts", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[object, object, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        """Cancel the rollouts still running (a run stopped early), let them unwind, then stop the loop."""

        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):  # best effort: the loop is stopped below either way
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


def _sampling_seed(config: RLConfig, batch_index: int) -> int:
    return (config.seed * 1_000_003 + batch_index) % (1 << 62)


def _split(items: Sequence[Datum], parts: int) -> list[list[Datum]]:
    """``items`` in ``parts`` contiguous, nearly equal, non-empty chunks (fewer when there are fewer items)."""
    count = min(parts, len(items))
    bounds = np.linspace(0, len(items), count + 1).round().astype(int)
    return [list(items[bounds[k] : bounds[k + 1]]) for k in range(count)]


def _reference_logprobs(sampler: SamplingClient, batch: RLBatch) -> list[np.ndarray]:
    futures = [sampler.compute_logprobs(prompt) for prompt in reference_prompts(batch)]
    out: list[np.ndarray] = []
    for future, datum in zip(futures, batch.datums, strict=True):
        scores = np.asarray(future.result(), dtype=np.float32)
        out.append(scores[1 : 1 + datum.length])
    return out


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
) -> RLResult:
    """Run (or resume) RL as ``config`` says on ``dataset``'s environment groups; see the module docstring.

    ``decode`` turns token ids into text for transcripts; ``test_dataset`` (optional) is rolled out before,
    every ``eval_every`` steps and after training (``eval_reward_mean``). ``after_step(step)`` runs once step
    ``step``'s metrics are logged (tests use it to kill a run). ``sinks`` receive every metrics row too; ``None``
    makes the ones ``config.log_to`` asks for, ``()`` none.
    """
    if len(dataset) == 0:
        raise TinkerflowError("run_rl: the dataset has no batches.")
    total = config.steps
    staleness = config.staleness
    run = Run.start(
        config.run_dir,
        config,
        log_to=config.log_to,
        sinks=sinks,
        total_steps=total,
        out=out,
        progress_label="reward",
    )
    stream = run.out
    if not run.resumed:
        stream.write(
            f"RL on {config.env} with {config.base_model} (LoRA rank {config.lora_rank}): {total} steps of "
            f"{config.groups_per_batch} groups x {config.group_size}, {config.loss}, {config.mode} mode\n"
        )
    client = run.training_client(backend, config.base_model, lora_rank=config.lora_rank, seed=config.seed)
    start = run.start_step
    extra: dict[str, object] = json.loads(run.state.extra_json) if run.state is not None else {}
    recorded = extra.get("sampler_paths", {})
    sampler_paths: dict[int, str] = {int(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    reference_path = str(extra["reference"]) if "reference" in extra else None
    if config.kl_coef > 0 and reference_path is None:
        reference_path = client.save_weights_for_sampler("reference").result()
    reference = client.create_sampling_client(reference_path).result() if reference_path is not None else None

    policy = RolloutPolicy(
        max_concurrency=config.concurrency,
        episode_timeout_s=config.episode_timeout_s,
        on_failure=config.on_failure,
        max_retries=config.max_retries,
    )
    advantage_config = AdvantageConfig(
        normalize_std=config.normalize_advantages, constant_groups=config.constant_groups
    )
    loss = loss_config(config)
    adam = AdamParams(learning_rate=config.learning_rate, beta1=0.9, beta2=0.95, eps=1e-8)
    loop = _EventLoopThread()
    transcripts = MetricsLog(run.run_dir / "transcripts.jsonl", resume_step=start)

    def completer(sampler: SamplingClient, seed: int) -> BatchingTokenCompleter:
        # concurrent calls for the same observation (a group's first turn) become one request of k samples
        return BatchingTokenCompleter(
            sampler, temperature=config.temperature, max_tokens=config.max_tokens, seed=seed, max_batch=64
        )

    def launch(batch_index: int, sampler: SamplingClient) -> concurrent.futures.Future[list[TrajectoryGroup]]:
        builders = dataset.get_batch(batch_index % len(dataset))
        return loop.submit(
            rollout_batch(
                builders,
                completer(sampler, _sampling_seed(config, batch_index)),
                policy,
                id_prefix=f"step{batch_index}",
            )
        )

    def evaluate(sampler: SamplingClient, label: int) -> float | None:
        if test_dataset is None or len(test_dataset) == 0 or config.eval_groups == 0:
            return None
        builders: list[EnvGroupBuilder] = []
        index = 0
        while len(builders) < config.eval_groups and index < len(test_dataset):
            builders.extend(test_dataset.get_batch(index))
            index += 1
        groups = loop.submit(
            rollout_batch(
                builders[: config.eval_groups],
                completer(sampler, _sampling_seed(config, 10_000_000 + label)),
                policy,
                id_prefix=f"eval{label}",
            )
        ).result()
        rewards = np.concatenate([group.total_rewards_G() for group in groups]) if groups else np.zeros(0)
        return float(rewards.mean()) if rewards.size else math.nan

    current: dict[int, SamplingClient] = {}

    def sampler_for_version(version: int) -> SamplingClient:
        """A sampler of the weights after ``version`` steps: the current weights (saved now, and in async mode
        recorded for a resume) or recorded ones of an earlier step."""
        if version in current:
            return current[version]
        if version == client_version:
            if staleness > 0:
                path = client.save_weights_for_sampler(f"sampler-{version:06d}").result()
                sampler_paths[version] = path
                sampler = client.create_sampling_client(path).result()
            else:
                sampler = client.save_weights_and_get_sampling_client().result()
            current.clear()
            current[version] = sampler
            return sampler
        if version in sampler_paths:
            return client.create_sampling_client(sampler_paths[version]).result()
        raise TinkerflowError(
            f"{run.run_dir}: resuming needs the sampler weights of step {version}, which were not recorded; "
            "start a new run_dir."
        )

    client_version = start  # the weights the training client holds: after this many steps
    in_flight: dict[int, concurrent.futures.Future[list[TrajectoryGroup]]] = {}
    eval_before: float | None = None
    last_sampler_path = ""
    try:
        if staleness > 0:  # re-launch the batches the killed run had in flight, with their recorded weights
            for batch_index in range(start, min(start + staleness, total)):
                in_flight[batch_index] = launch(batch_index, sampler_for_version(max(0, batch_index - staleness)))
        for step in range(start, total):
            began = time.monotonic()
            client_version = step
            sampler = sampler_for_version(step)
            if step == 0:
                eval_before = evaluate(sampler, 0)
                if eval_before is not None:
                    stream.write(f"held-out reward before training: {eval_before:.4f}\n")
                    row_extra: dict[str, float] = {"eval_reward_mean": eval_before}
                else:
                    row_extra = {}
            else:
                row_extra = {}
            if step + staleness < total:
                in_flight[step + staleness] = launch(step + staleness, sampler)
            eval_reward = (
                evaluate(sampler, step) if config.eval_every and step % config.eval_every == 0 and step > 0 else None
            )
            groups = in_flight.pop(step).result()
            sampled_at = time.monotonic()
            advantages = compute_advantages(groups, advantage_config)
            row: dict[str, float | int | str | None] = dict(rollout_metrics(groups, advantages))
            row.update({"staleness": min(staleness, step), "sampling_s": sampled_at - began})
            advantage_of = {
                tid: float(a)
                for kept in advantages.kept
                for tid, a in zip(kept.trajectory_ids, kept.advantages_G, strict=True)
            }
            for episode in episode_transcripts(step, groups, decode, advantage_of):
                transcripts.log(step, {"episode": to_json(episode)})
            if not advantages.kept:
                row.update({"skipped_step": 1, "datums": 0})
            else:
                batch = assemble_batch(groups, advantages)
                if reference is not None:
                    batch, kl_metrics = kl_penalty(
                        batch, _reference_logprobs(reference, batch), config.kl_coef, config.kl_discount
                    )
                    row.update(kl_metrics)
                datums = loss_datums(batch, loss)
                steps: list[APIFuture[Mapping[str, float]]] = []
                losses: list[APIFuture[ForwardBackwardOutput]] = []
                for chunk in _split(datums, config.substeps):
                    losses.append(client.forward_backward(chunk, loss.loss_fn, loss.config()))
                    steps.append(client.optim_step(adam))
                loss_sum = sum(future.result().metrics.get("loss:sum", math.nan) for future in losses)
                for optim in steps:
                    optim.result()
                row.update(
                    {
                        "skipped_step": 0,
                        "datums": len(datums),
                        "loss_sum": loss_sum,
                        "train_s": time.monotonic() - sampled_at,
                    }
                )
            if eval_reward is not None:
                row["eval_reward_mean"] = eval_reward
            row.update(row_extra)
            reward = row.get("reward/mean", math.nan)
            run.log(step, row, float(reward) if isinstance(reward, int | float) else math.nan)
            if after_step is not None:
                after_step(step)
            done = step + 1
            if done == total or (config.save_every and done % config.save_every == 0):
                needed = {v: p for v, p in sampler_paths.items() if done - staleness <= v < done}
                extra_out: dict[str, object] = {"sampler_paths": {str(k): v for k, v in needed.items()}}
                if reference_path is not None:
                    extra_out["reference"] = reference_path
                run.checkpoint(client, done, json.dumps({"next_batch": done}), extra_json=json.dumps(extra_out))
        last_sampler_path = client.save_weights_for_sampler("final").result()
        final_sampler = client.create_sampling_client(last_sampler_path).result()
        eval_after = evaluate(final_sampler, total)
    finally:
        for future in in_flight.values():
            future.cancel()
        loop.close()
        transcripts.close()
        run.close()
    episodes = [
        from_json(str(row["episode"]), EpisodeTranscript) for row in MetricsLog.read(run.run_dir / "transcripts.jsonl")
    ]
    atomic_write_text(run.run_dir / "transcripts.html", transcripts_html(episodes, f"RL rollouts: {config.env}"))
    run.write_chart(["reward/mean", "eval_reward_mean"], f"RL reward: {config.env}", "reward.html")
    if eval_after is not None:
        before = f"{eval_before:.4f} -> " if eval_before is not None else ""
        stream.write(f"held-out reward: {before}{eval_after:.4f} after training\n")
    return RLResult(
        steps=total,
        eval_reward_before=eval_before,
        eval_reward_after=eval_after,
        final_checkpoint=run.last_checkpoint,
        sampler_checkpoint=last_sampler_path,
    )
