"""A client process for the kill tests: tinkerflow's SL, RL or DPO loop with ``TinkerBackend`` on a tiny model.

    python -m tests.serve.scripts.loop_client {sl,rl,dpo} ROOT NAME [--pause-after STEP]

The backend is made as ``tinkerflow sl|rl|dpo`` makes it for ``backend="tinker"``: ``TinkerBackend()``, which reads
``TINKER_BASE_URL`` and ``TINKER_API_KEY`` from the environment. The run directory is ``ROOT/NAME``; the data
files live in ``ROOT`` (written by the first run that needs them), so runs under one root differ only in their run
directory. With ``--pause-after STEP`` the loop stops dead once step ``STEP`` is logged: it writes
``ROOT/NAME.paused`` and waits (at most two minutes) for ``ROOT/NAME.go`` to continue, so a test can SIGKILL it, or
kill the server under it, at a known point. A finished run prints ``RESULT {json}`` as its last line.

The configs (:func:`make_config`) and :func:`run_loop` are imported by the tests too, for the uninterrupted runs
they compare with.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, TextIO

import attrs
import numpy as np

from tinkerflow.config import SLConfig
from tinkerflow.model_input import ModelInput
from tinkerflow.preference.config import DPOConfig
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import Metrics, StepResult, StopCondition, Trajectory

if TYPE_CHECKING:
    from tinkerflow.sampling import SampledSequence
    from tinkerflow.shell.backends.protocol import Backend

LoopKind = Literal["sl", "rl", "dpo"]
KINDS: Final[tuple[LoopKind, ...]] = ("sl", "rl", "dpo")
#: Where each loop is paused in the kill tests (after its first checkpoint, with rows logged past it) and the step of
#: the checkpoint it resumes from.
PAUSE_AT: Final[dict[LoopKind, tuple[int, int]]] = {"sl": (7, 6), "rl": (3, 2), "dpo": (7, 6)}
PROMPT: Final = (256, 72, 105, 58)  # BOS "Hi:" in the tiny models' byte vocabulary
#: Wall-clock fields of RL rows (they differ between any two runs).
TIMING_FIELDS: Final = ("sampling_s", "train_s")


# -- a trivial RL environment (as in tests/test_rl_loop.py) ---------------------------------------------------------


class AsciiEnv:
    """One turn: reward = the fraction of action bytes below 128 (random init sits near 0.5)."""

    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return ModelInput.from_tokens(PROMPT), StopCondition(max_tokens=6)

    async def step(self, action: SampledSequence) -> StepResult:
        tokens = np.asarray(action.tokens_T)
        return StepResult(reward=float(np.mean(tokens < 128)) if tokens.size else 0.0, done=True)


@attrs.frozen
class AsciiBuilder:
    size: int

    async def make_envs(self) -> Sequence[AsciiEnv]:
        return [AsciiEnv() for _ in range(self.size)]

    async def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> Sequence[tuple[float, Metrics]]:
        return [(0.0, {}) for _ in trajectories]

    def tags(self) -> tuple[str, ...]:
        return ("ascii",)


@attrs.frozen
class AsciiDataset:
    groups: int
    size: int

    def __len__(self) -> int:
        return 1000

    def get_batch(self, index: int) -> Sequence[AsciiBuilder]:
        return [AsciiBuilder(self.size) for _ in range(self.groups)]


def decode_bytes(tokens: np.ndarray) -> str:
    return bytes(int(t) for t in tokens if t < 256).decode("utf-8", errors="replace")


# -- configs ------------------------------------------------------------------------------------------------------


def _write_jsonl(path: pathlib.Path, rows: Sequence[Mapping[str, object]]) -> None:
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, path)


def make_config(kind: LoopKind, root: pathlib.Path, name: str) -> SLConfig | RLConfig | DPOConfig:
    """The config of a ``kind`` run in ``root/name`` (the same small runs as the local backend's loop tests)."""
    run_dir = str(root / name)
    if kind == "sl":
        data = root / "sl.jsonl"
        chats = [
            {"messages": [{"role": "user", "content": f"n{i}"}, {"role": "assistant", "content": "ok!"}]}
            for i in range(24)
        ]
        _write_jsonl(data, chats)
        return SLConfig(
            train_data=str(data),
            run_dir=run_dir,
            base_model="tiny-llama",
            batch_size=4,
            epochs=2,
            learning_rate=1e-2,
            lora_rank=4,
            eval_every=4,
            save_every=3,
            max_length=64,
            num_samples_shown=1,
            sample_max_tokens=4,
        )
    if kind == "rl":
        return RLConfig(
            env="ascii",
            base_model="tiny-llama",
            run_dir=run_dir,
            steps=6,
            groups_per_batch=2,
            group_size=4,
            # a step size and KL weight under which 6 steps of 2 x 4 samples learn clearly: with 2e-2 and a KL weight
            # of 0.5 the held-out reward moved by less than its sampling noise (it rose or fell with the stream)
            learning_rate=1e-1,
            lora_rank=4,
            max_tokens=6,
            eval_every=3,
            eval_groups=8,
            save_every=2,
            seed=3,
            kl_coef=0.05,
        )
    train, test = root / "dpo-train.jsonl", root / "dpo-test.jsonl"
    _write_jsonl(train, [{"prompt": f"q{i}?", "chosen": "yes!", "rejected": "no"} for i in range(22)])
    _write_jsonl(test, [{"prompt": f"held out {i}?", "chosen": "yes!", "rejected": "no"} for i in range(6)])
    return DPOConfig(
        train_data=str(train),
        test_data=str(test),
        base_model="tiny-llama",
        run_dir=run_dir,
        batch_size=4,
        epochs=2,
        learning_rate=1e-2,
        lora_rank=4,
        eval_every=4,
        save_every=3,
        max_length=64,
    )


@attrs.frozen
class LoopResult:
    """What the tests compare: the run's last ``tinker://`` (or local) checkpoint and its headline numbers."""

    final_checkpoint: str
    sampler_checkpoint: str
    before: float | None
    after: float | None


def run_loop(
    kind: LoopKind,
    config: SLConfig | RLConfig | DPOConfig,
    backend: Backend,
    *,
    after_step: Callable[[int], None] | None = None,
    out: TextIO | None = None,
) -> LoopResult:
    """Run (or resume) the ``kind`` loop of ``config`` on ``backend`` with the tiny models' byte renderer."""
    from tests.tiny_model import TINY_RENDERER

    stream = out if out is not None else sys.stdout
    if kind == "sl":
        from tinkerflow.shell.recipes.sl import run_sl

        assert isinstance(config, SLConfig)
        sl = run_sl(config, backend, TINY_RENDERER, out=stream, after_step=after_step, sinks=())
        return LoopResult(sl.final_checkpoint, sl.sampler_checkpoint, sl.eval_nll_before, sl.eval_nll_after)
    if kind == "rl":
        from tinkerflow.shell.recipes.rl import run_rl

        assert isinstance(config, RLConfig)
        data = AsciiDataset(config.groups_per_batch, config.group_size)
        rl = run_rl(
            config,
            backend,
            data,
            decode=decode_bytes,
            test_dataset=data,
            out=stream,
            after_step=after_step,
            sinks=(),
        )
        return LoopResult(rl.final_checkpoint, rl.sampler_checkpoint, rl.eval_reward_before, rl.eval_reward_after)
    from tinkerflow.shell.recipes.dpo import run_dpo

    assert isinstance(config, DPOConfig)
    dpo = run_dpo(config, backend, TINY_RENDERER, out=stream, after_step=after_step, sinks=())
    before = dpo.eval_before.dpo_loss if dpo.eval_before is not None else None
    after = dpo.eval_after.dpo_loss if dpo.eval_after is not None else None
    return LoopResult(dpo.final_checkpoint, dpo.sampler_checkpoint, before, after)


def pause_hook(root: pathlib.Path, name: str, step_to_pause: int, wait_s: float = 120.0) -> Callable[[int], None]:
    """An ``after_step`` hook that stops the loop once step ``step_to_pause`` is logged (see the module docstring)."""
    paused, go = root / f"{name}.paused", root / f"{name}.go"

    def hook(step: int) -> None:
        if step != step_to_pause:
            return
        paused.write_text(str(step))
        deadline = time.monotonic() + wait_s
        while not go.exists():
            if time.monotonic() > deadline:
                print(f"paused after step {step} and nobody came; exiting", flush=True)
                os._exit(3)
            time.sleep(0.02)

    return hook


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loop_client")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("root", type=pathlib.Path)
    parser.add_argument("name")
    parser.add_argument("--pause-after", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from tinkerflow.shell.backends.tinker import TinkerBackend

    torch.set_num_threads(1)
    config = make_config(args.kind, args.root, args.name)
    hook = None if args.pause_after is None else pause_hook(args.root, args.name, args.pause_after)
    with TinkerBackend() as backend:  # TINKER_BASE_URL / TINKER_API_KEY, as the CLI makes it
        result = run_loop(args.kind, config, backend, after_step=hook)
    print("RESULT " + json.dumps(attrs.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
