"""Inspect AI tasks bundled with tinkerflow, and the same items as tinkerflow evaluations. (Shell.)

``tinkerflow/arithmetic``: ``n`` questions "What is a + b? Answer with the number only." drawn from ``seed``, the
target the sum. Inspect scores it with its built-in ``pattern`` scorer (:data:`ARITHMETIC_PATTERN`: the number the
answer starts with, compared to the target as is); :func:`arithmetic_spec` is the tinkerflow ``regex`` evaluation
that grades exactly alike (the first group of the same expression, no normalization), and
:func:`arithmetic_examples` the same items as :class:`~tinkerflow.evals.EvalExample`\\ s, so one set of answers
gets one score either way::

    inspect eval tinkerflow/arithmetic --model tinkerflow/tiny-llama -M renderer=role_colon -T n=10

Offline: the items are generated, nothing is downloaded.
"""

from __future__ import annotations

import random
from typing import Final

import attrs
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import pattern
from inspect_ai.solver import generate

from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalExample, EvalSpec

__all__ = [
    "ARITHMETIC_PATTERN",
    "ArithmeticItem",
    "arithmetic",
    "arithmetic_examples",
    "arithmetic_items",
    "arithmetic_spec",
]

#: The answer: the (optionally negative) integer an answer starts with, after any whitespace.
ARITHMETIC_PATTERN: Final = r"^\s*(-?\d+)"
_QUESTION: Final = "What is {a} + {b}? Answer with the number only."


@attrs.frozen
class ArithmeticItem:
    """One question of ``tinkerflow/arithmetic``: its id, text and answer."""

    id: str
    question: str
    answer: str


def arithmetic_items(n: int = 20, seed: int = 0, max_operand: int = 9) -> tuple[ArithmeticItem, ...]:
    """``n`` additions of two integers in ``[0, max_operand]``, drawn from ``seed`` (the same on every platform)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("arithmetic", "n", f"must be an integer >= 1, got {n!r}.")
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 0:
        raise ConfigError("arithmetic", "max_operand", f"must be an integer >= 0, got {max_operand!r}.")
    rng = random.Random(seed)
    items = []
    for index in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        items.append(ArithmeticItem(f"add-{index}", _QUESTION.format(a=a, b=b), str(a + b)))
    return tuple(items)


def arithmetic_examples(n: int = 20, seed: int = 0, max_operand: int = 9) -> tuple[EvalExample, ...]:
    """The items of :func:`arithmetic` as tinkerflow examples (one user message each, the answer as reference)."""
    return tuple(
        EvalExample(id=item.id, messages=(Message(role="user", content=item.question),), reference=item.answer)
        for item in arithmetic_items(n, seed, max_operand)
    )


def arithmetic_spec(name: str = "arithmetic", *, max_tokens: int = 64, temperature: float = 0.0) -> EvalSpec:
    """The tinkerflow evaluation that grades :func:`arithmetic_examples` exactly as Inspect's scorer of
    :func:`arithmetic` grades the task (``regex`` over :data:`ARITHMETIC_PATTERN`, no normalization)."""
    return EvalSpec(
        name=name,
        kind="regex",
        pattern=ARITHMETIC_PATTERN,
        normalize=False,
        max_tokens=max_tokens,
        temperature=temperature,
    )


@task
def arithmetic(n: int = 20, seed: int = 0, max_operand: int = 9) -> Task:
    """``n`` one-step additions (see the module docstring), answered in one generation and scored by the number
    the answer starts with."""
    samples = [
        Sample(id=item.id, input=item.question, target=item.answer) for item in arithmetic_items(n, seed, max_operand)
    ]
    return Task(
        dataset=MemoryDataset(samples, name="tinkerflow-arithmetic"),
        solver=generate(),
        scorer=pattern(ARITHMETIC_PATTERN, ignore_case=False),
    )
