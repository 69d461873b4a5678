"""The sampling half of the RL recipe (shell): samplers per weight version, batches rolled out in the background.

Batch ``n`` is rolled out by a sampler of the weights after ``n - K`` steps, where ``K`` is the staleness (0 in
``sync`` mode; ``max_staleness`` in ``async`` mode, so sampling of later batches overlaps training of this one).
Rollouts run on an asyncio loop on a daemon thread (:class:`EventLoopThread`) while the main thread trains; each
episode is bounded by ``episode_timeout_s`` (wall clock, sampling included) and ``max_turns``, and its environment
calls run on a worker thread where a blocking one can be timed out (:mod:`tinkerflow.shell.rollouts`). In
async mode the sampler weights of every version are saved and their paths recorded with each checkpoint
(:meth:`RolloutSampling.needed_paths`), so a resumed run re-launches the batches the killed run had in flight with
the same weights and the same per-batch sampling seeds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Coroutine, Mapping
from typing import TypeVar

import numpy as np

from tinkerflow.errors import TinkerflowError
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import EnvGroupBuilder, RLDataset, TrajectoryGroup
from tinkerflow.shell.backends.protocol import SamplingClient, TrainingClient
from tinkerflow.shell.completers import BatchingTokenCompleter
from tinkerflow.shell.rollouts import RolloutPolicy, rollout_batch

__all__ = ["EventLoopThread", "RolloutSampling", "sampling_seed"]

T = TypeVar("T")


class EventLoopThread:
    """An asyncio loop on a daemon thread: rollouts run there while the main thread trains."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tinkerflow-rollouts", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[object, object, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the loop; its future can be awaited from any thread."""
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


def sampling_seed(config: RLConfig, batch_index: int) -> int:
    """The sampling seed of batch ``batch_index`` (evaluations use ``10_000_000 + step``)."""
    return (config.seed * 1_000_003 + batch_index) % (1 << 62)


class RolloutSampling:
    """Samplers of each weight version and the batches in flight (see the module docstring).

    ``recorded`` are the sampler paths a checkpoint recorded (resume); ``version`` is the number of steps the
    training client's weights have taken (set by the recipe at the start of each step).
    """

    def __init__(
        self,
        config: RLConfig,
        client: TrainingClient,
        dataset: RLDataset,
        test_dataset: RLDataset | None,
        *,
        start: int,
        recorded: Mapping[int, str],
    ) -> None:
        self.config, self.client, self.dataset, self.test_dataset = config, client, dataset, test_dataset
        self.staleness = config.staleness
        self.version = start
        self.sampler_paths: dict[int, str] = dict(recorded)
        self.in_flight: dict[int, concurrent.futures.Future[list[TrajectoryGroup]]] = {}
        self._current: dict[int, SamplingClient] = {}
        self._loop = EventLoopThread()
        self._policy = RolloutPolicy(
            max_concurrency=config.concurrency,
            episode_timeout_s=config.episode_timeout_s,
            on_failure=config.on_failure,
            max_retries=config.max_retries,
            max_turns=config.max_turns,
        )

    def _completer(self, sampler: SamplingClient, seed: int) -> BatchingTokenCompleter:
        # concurrent calls for the same observation (a group's first turn) become one request of k samples
        config = self.config
        return BatchingTokenCompleter(
            sampler, temperature=config.temperature, max_tokens=config.max_tokens, seed=seed, max_batch=64
        )

    def sampler_for(self, version: int) -> SamplingClient:
        """A sampler of the weights after ``version`` steps: the current weights (saved now, and in async mode
        recorded for a resume) or recorded ones of an earlier step."""
        if version in self._current:
            return self._current[version]
        if version == self.version:
            if self.staleness > 0:
                path = self.client.save_weights_for_sampler(f"sampler-{version:06d}").result()
                self.sampler_paths[version] = path
                sampler = self.client.create_sampling_client(path).result()
            else:
                sampler = self.client.save_weights_and_get_sampling_client().result()
            self._current.clear()
            self._current[version] = sampler
            return sampler
        if version in self.sampler_paths:
            return self.client.create_sampling_client(self.sampler_paths[version]).result()
        raise TinkerflowError(
            f"{self.config.run_dir}: resuming needs the sampler weights of step {version}, which were not recorded; "
            "start a new run_dir."
        )

    def launch(self, batch_index: int, sampler: SamplingClient) -> None:
        """Start rolling out batch ``batch_index`` with ``sampler`` in the background."""
        builders = self.dataset.get_batch(batch_index % len(self.dataset))
        completer = self._completer(sampler, sampling_seed(self.config, batch_index))
        self.in_flight[batch_index] = self._loop.submit(
            rollout_batch(builders, completer, self._policy, id_prefix=f"step{batch_index}")
        )

    def relaunch(self, start: int, total: int) -> None:
        """Launch again the batches a killed run had in flight at ``start``, with their recorded weights."""
        if self.staleness > 0:
            for batch_index in range(start, min(start + self.staleness, total)):
                self.launch(batch_index, self.sampler_for(max(0, batch_index - self.staleness)))

    def take(self, batch_index: int) -> list[TrajectoryGroup]:
        """Wait for batch ``batch_index``'s groups."""
        return self.in_flight.pop(batch_index).result()

    def evaluate(self, sampler: SamplingClient, label: int) -> float | None:
        """Mean total reward of ``eval_groups`` held-out groups rolled out with ``sampler`` (``None`` without
        held-out data)."""
        test, wanted = self.test_dataset, self.config.eval_groups
        if test is None or len(test) == 0 or wanted == 0:
            return None
        builders: list[EnvGroupBuilder] = []
        index = 0
        while len(builders) < wanted and index < len(test):
            builders.extend(test.get_batch(index))
            index += 1
        completer = self._completer(sampler, sampling_seed(self.config, 10_000_000 + label))
        groups = self._loop.submit(
            rollout_batch(builders[:wanted], completer, self._policy, id_prefix=f"eval{label}")
        ).result()
        rewards = np.concatenate([group.total_rewards_G() for group in groups]) if groups else np.zeros(0)
        return float(rewards.mean()) if rewards.size else math.nan

    def needed_paths(self, done: int) -> dict[str, str]:
        """The recorded sampler paths a run resumed after ``done`` steps needs (its in-flight batches' weights)."""
        return {str(v): p for v, p in self.sampler_paths.items() if done - self.staleness <= v < done}

    def close(self) -> None:
        """Cancel the batches in flight and stop the event loop."""
        for future in self.in_flight.values():
            future.cancel()
        self._loop.close()
