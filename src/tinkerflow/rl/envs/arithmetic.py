"""Arithmetic: ``a + b`` / ``a - b`` with small numbers and a verifiable reward.

Designed so the local backend's embedded SmolLM2-135M-Instruct solves it sometimes but not always, which is
what RL needs to make progress within minutes on a CPU. With the default prompt (:func:`arithmetic_messages`:
four worked examples answering ``Answer: N``), operands 0-9 and non-negative differences, the model answers
30-45% correctly at temperature 1, and the accuracy of a group of 8 samples ranges from 0 to ~75% across problems
(measured on the local backend: 16 problems x 8 samples, and 4 batches of 4 x 8 rollouts). Without the worked
examples, or with operands up to 20, it drops to 5-15%.

Reward (:class:`~tinkerflow.rl.envs.base.ProblemEnv`): 1 for the right number, minus ``format_coef`` unless the
reply is exactly ``Answer: N`` ended by the stop token. The number read is the one after the last
``Answer:``, or the whole reply when it is a bare integer (:func:`parse_answer`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final, Literal

import attrs
import numpy as np

from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.render import Renderer
from tinkerflow.rl.envs.base import ProblemBuilder, ProblemEnv, ProblemGroupBuilder, ProblemOptions
from tinkerflow.rl.envs.datasets import GeneratedRLDataset

__all__ = [
    "ANSWER_INSTRUCTION",
    "FEWSHOT_EXAMPLES",
    "TAG",
    "ArithmeticOptions",
    "ArithmeticProblem",
    "arithmetic_messages",
    "builder",
    "dataset",
    "is_well_formatted",
    "make_env",
    "parse_answer",
    "sample_problem",
]

TAG: Final = "arithmetic"
#: Appended to every question.
ANSWER_INSTRUCTION: Final = " Reply with 'Answer: N'."
#: Worked examples put before the question (expression, answer).
FEWSHOT_EXAMPLES: Final[tuple[tuple[str, int], ...]] = (("4 + 5", 9), ("7 - 3", 4), ("2 + 6", 8), ("9 - 1", 8))

Operator = Literal["+", "-"]
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_BARE = re.compile(r"\s*(-?\d+)\s*\.?\s*")
_FORMAT = re.compile(r"\s*Answer:\s*-?\d+\s*\.?\s*")


@attrs.frozen
class ArithmeticProblem:
    """``a op b``."""

    a: int
    op: Operator
    b: int

    def __attrs_post_init__(self) -> None:
        if self.op not in ("+", "-"):
            raise ValidationError("ArithmeticProblem", "op", f"must be '+' or '-', got {self.op!r}.")
        for name in ("a", "b"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError("ArithmeticProblem", name, f"must be an int, got {value!r}.")

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def question(self) -> str:
        return f"What is {self.expression}?{ANSWER_INSTRUCTION}"


def sample_problem(
    rng: np.random.Generator, max_operand: int = 9, ops: Sequence[Operator] = ("+", "-"), allow_negative: bool = False
) -> ArithmeticProblem:
    """A random problem with operands in ``0..max_operand``; differences are non-negative unless
    ``allow_negative`` (the operands are swapped)."""
    if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 0:
        raise ConfigError("arithmetic.sample_problem", "max_operand", f"must be an int >= 0, got {max_operand!r}.")
    if not ops or any(op not in ("+", "-") for op in ops):
        raise ConfigError("arithmetic.sample_problem", "ops", f"must be a non-empty sequence of '+'/'-', got {ops!r}.")
    a, b = (int(value) for value in rng.integers(0, max_operand + 1, size=2))
    op = ops[int(rng.integers(len(ops)))]
    if op == "-" and b > a and not allow_negative:
        a, b = b, a
    return ArithmeticProblem(a, op, b)


def _fewshot_count(fewshot: bool | int) -> int:
    if isinstance(fewshot, bool):
        return len(FEWSHOT_EXAMPLES) if fewshot else 0
    if not isinstance(fewshot, int) or not 0 <= fewshot <= len(FEWSHOT_EXAMPLES):
        raise ConfigError(
            "arithmetic",
            "fewshot",
            f"must be a bool or an int in 0..{len(FEWSHOT_EXAMPLES)}, got {fewshot!r}.",
            "give the number of worked examples.",
        )
    return fewshot


def arithmetic_messages(problem: ArithmeticProblem, fewshot: bool | int = True) -> tuple[Message, ...]:
    """The prompt: worked examples (all of them for ``True``, the first ``n`` for an int ``n``, none for
    ``False``) and the question, each asking for ``Answer: N``."""
    messages: list[Message] = []
    for expression, answer in FEWSHOT_EXAMPLES[: _fewshot_count(fewshot)]:
        messages.append(Message(role="user", content=f"What is {expression}?{ANSWER_INSTRUCTION}"))
        messages.append(Message(role="assistant", content=f"Answer: {answer}"))
    messages.append(Message(role="user", content=problem.question))
    return tuple(messages)


def parse_answer(text: str) -> int | None:
    """The number after the last ``Answer:``, or the reply itself when it is a bare integer; else ``None``."""
    matches = _ANSWER.findall(text)
    if matches:
        return int(matches[-1])
    bare = _BARE.fullmatch(text)
    return int(bare.group(1)) if bare else None


def is_well_formatted(text: str) -> bool:
    """The reply is exactly ``Answer: N`` (surrounding whitespace and a final period allowed)."""
    return _FORMAT.fullmatch(text) is not None


def _grader(answer: int, text: str) -> bool:
    return parse_answer(text) == answer


@attrs.frozen
class ArithmeticOptions(ProblemOptions):
    """:class:`~tinkerflow.rl.envs.base.ProblemOptions` with ``fewshot`` the worked examples to show (all of
    them for ``True``, the first ``n`` for an int ``n``, none for ``False``) and a 16-token answer limit."""

    max_tokens: int | None = 16

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _fewshot_count(self.fewshot)


_DEFAULTS: Final = ArithmeticOptions()


def make_env(renderer: Renderer, problem: ArithmeticProblem, options: ArithmeticOptions = _DEFAULTS) -> ProblemEnv:
    """A single-use environment for ``problem``."""
    messages = arithmetic_messages(problem, options.fewshot)
    return ProblemEnv(
        renderer,
        problem.question,
        functools.partial(_grader, problem.answer),
        format_check=is_well_formatted,
        prefix=messages[:-1],
        reference_answer=str(problem.answer),
        format_coef=options.format_coef,
        max_tokens=options.max_tokens,
    )


#: ``builder(renderer, problem, group_size, options)``: ``group_size`` environments for ``problem``, tagged
#: ``"arithmetic"``.
builder: Final = ProblemBuilder(make_env, TAG, _DEFAULTS)


def dataset(
    renderer: Renderer,
    *,
    batch_size: int,
    group_size: int,
    n_batches: int,
    seed: int = 0,
    max_operand: int = 9,
    ops: Sequence[Operator] = ("+", "-"),
    fewshot: bool | int = True,
    format_coef: float = 0.1,
    max_tokens: int | None = 16,
) -> GeneratedRLDataset:
    """``n_batches`` batches of ``batch_size`` random problems, ``group_size`` samples each (deterministic in
    ``seed`` and the batch index); ``fewshot``, ``format_coef`` and ``max_tokens`` as in
    :class:`ArithmeticOptions`."""
    ops = tuple(ops)
    sample_problem(np.random.default_rng(0), max_operand, ops)  # validate the options now, not at batch 0
    options = ArithmeticOptions(fewshot=fewshot, format_coef=format_coef, max_tokens=max_tokens)

    def make(rng: np.random.Generator) -> ProblemGroupBuilder:
        return builder(renderer, sample_problem(rng, max_operand, ops), group_size, options)

    return GeneratedRLDataset(make, batch_size, n_batches, seed)
