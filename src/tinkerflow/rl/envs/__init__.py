"""Environments for RL: building blocks over a renderer, datasets of group builders, and examples.

* :mod:`~tinkerflow.rl.envs.base`: :class:`MessageEnv` (multi-turn, message level), :class:`ProblemEnv`
  (single turn, graded), :class:`ProblemGroupBuilder` (``group_size`` copies of one env), ``ProblemOptions`` (a
  problem env's options) and ``ProblemBuilder`` (an example's ``builder``).
* :mod:`~tinkerflow.rl.envs.datasets`: :class:`ListRLDataset` (a list of builders, seeded per-epoch order) and
  :class:`GeneratedRLDataset` (procedural builders seeded per batch and slot). Both are pure functions of the
  batch index, so resume is exact.
* Examples, each with an options record and ``make_env``/``builder``/``dataset`` factories:
  :mod:`~tinkerflow.rl.envs.arithmetic` (verifiable reward, learnable by the local embedded model on a CPU),
  :mod:`~tinkerflow.rl.envs.guess_number` (multi-turn), :mod:`~tinkerflow.rl.envs.math_boxed` (boxed-answer
  grading, for real models), :mod:`~tinkerflow.rl.envs.tool_use` (a tool-calling agent on arithmetic word
  problems, with a calculator tool) and :mod:`~tinkerflow.rl.envs.code` (Python tasks graded by unit tests run in
  a sandbox).
* :mod:`~tinkerflow.rl.envs.preference`: RLHF's answers rewarded by a tournament judged by a preference model.
"""

from tinkerflow.rl.envs import arithmetic, code, guess_number, math_boxed, preference, tool_use
from tinkerflow.rl.envs.base import (
    MessageEnv,
    MessageStep,
    ProblemEnv,
    ProblemGroupBuilder,
    always_well_formatted,
    parse_tokens,
    stop_condition_for,
)
from tinkerflow.rl.envs.datasets import GeneratedRLDataset, ListRLDataset, epoch_order

__all__ = [
    "GeneratedRLDataset",
    "ListRLDataset",
    "MessageEnv",
    "MessageStep",
    "ProblemEnv",
    "ProblemGroupBuilder",
    "always_well_formatted",
    "arithmetic",
    "code",
    "epoch_order",
    "guess_number",
    "math_boxed",
    "parse_tokens",
    "preference",
    "stop_condition_for",
    "tool_use",
]
