"""What an evaluation is, as a config record (:class:`EvalSpec`): the ``evals`` of SL / RL / DPO configs and of
``tinkerflow eval``. Pure.

An evaluation names its scorer (``kind``), its data, and when it runs inline (``every``). The kinds:

=================== =====================================================================================
``exact_match``     the greedy answer equals the reference (normalized unless ``normalize`` is false)
``regex``           ``pattern`` finds the answer (its first group) and it equals the reference
``json_match``      the answer is JSON, valid against ``schema`` (a JSON-schema file) and equal to the reference
``boxed_math``      the last ``\\boxed{}`` answer equals the reference (LaTeX-normalized)
``multiple_choice`` the choice with the highest logprob (``choice_norm``) is the right one (no sampling)
``nll``             mean NLL per token of each conversation's last assistant message (no sampling)
``judge``           win rate of the answer against the reference answer, judged pairwise by ``judge_model``
``inspect``         an Inspect AI task (``task``) run against the model; its first score's mean
=================== =====================================================================================
"""

from __future__ import annotations

import re
from typing import Final, Literal, TypeAlias, get_args

import attrs

from tinkerflow._validate import in_range, int_at_least, non_empty_str
from tinkerflow.errors import ConfigError

__all__ = ["GENERATION_KINDS", "EvalKind", "EvalSpec", "check_unique_names"]

EvalKind: TypeAlias = Literal[
    "exact_match", "regex", "json_match", "boxed_math", "multiple_choice", "nll", "judge", "inspect"
]
#: The kinds that sample an answer and grade its text.
GENERATION_KINDS: Final[frozenset[str]] = frozenset({"exact_match", "regex", "json_match", "boxed_math", "judge"})
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@attrs.frozen(kw_only=True)
class EvalSpec:
    """One evaluation: what it scores, on which data, and how often it runs during training.

    Attributes:
        name: names the metrics (``<name>/<kind>``, ``<name>/stderr``) and the transcript; letters, digits,
            ``_ . -``.
        kind: the scorer: ``exact_match``, ``regex``, ``json_match``, ``boxed_math``, ``multiple_choice``,
            ``nll``, ``judge`` or ``inspect`` (see docs/evals.md).
        data: the examples: a JSONL file (``messages`` or ``prompt``, and ``reference`` / ``choices`` +
            ``answer``), or ``null`` for the run's held-out conversations (SL only; the reference is each one's
            last assistant message).
        every: run every this many training steps (0: only before and after training; ``null``: at the run's
            ``eval_every``); always before and after.
        limit: score only the first this many examples (``null``: all).
        max_tokens: most tokens of a sampled answer.
        temperature: sampling temperature of answers (0: greedy).
        pattern: the regular expression of ``regex`` (its first group, if any, is the answer).
        schema: a JSON-schema file the answers of ``json_match`` must satisfy (``null``: none).
        normalize: compare answers with whitespace collapsed, case folded, a final period dropped.
        choice_norm: ``multiple_choice`` compares choices by total logprob (``sum``) or per token (``mean``).
        judge_model: the model judging ``judge`` (a base model name or a checkpoint path; ``null``: the base
            model of the run or checkpoint, untrained).
        task: the Inspect AI task of ``inspect`` (a registered name such as ``tinkerflow/people_json``, or
            ``file.py@task``).
    """

    name: str
    kind: EvalKind
    data: str | None = None
    every: int | None = None
    limit: int | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    pattern: str | None = None
    schema: str | None = None
    normalize: bool = True
    choice_norm: Literal["sum", "mean"] = "sum"
    judge_model: str | None = None
    task: str | None = None

    def __attrs_post_init__(self) -> None:
        where = f"EvalSpec[{self.name!r}]" if isinstance(self.name, str) else "EvalSpec"
        non_empty_str(self.name, where, "name", "give the evaluation a name.")
        if not _NAME.match(self.name):
            raise ConfigError(where, "name", "may hold only letters, digits, '_', '.', '-'.", "rename it.")
        if self.kind not in get_args(EvalKind):
            raise ConfigError(where, "kind", f"unknown kind {self.kind!r}.", f"use one of {get_args(EvalKind)}.")
        for field in ("data", "schema", "judge_model"):
            value = getattr(self, field)
            if value is not None:
                non_empty_str(value, where, field, "give a value or null.")
        int_at_least(self.every, where, "every", 0, allow_none=True)
        int_at_least(self.limit, where, "limit", 1, allow_none=True)
        int_at_least(self.max_tokens, where, "max_tokens", 1)
        in_range(self.temperature, where, "temperature", low=0.0)
        if self.choice_norm not in ("sum", "mean"):
            raise ConfigError(where, "choice_norm", f"must be 'sum' or 'mean', got {self.choice_norm!r}.")
        self._check_kind_fields(where)

    def _check_kind_fields(self, where: str) -> None:
        if self.kind == "regex":
            if not self.pattern:
                raise ConfigError(where, "pattern", "is required for kind 'regex'.", "give a regular expression.")
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ConfigError(where, "pattern", f"does not compile: {error}.", "fix the expression.") from error
        elif self.pattern is not None:
            raise ConfigError(where, "pattern", "applies only to kind 'regex'.", "remove it.")
        if self.schema is not None and self.kind != "json_match":
            raise ConfigError(where, "schema", "applies only to kind 'json_match'.", "remove it.")
        if self.judge_model is not None and self.kind != "judge":
            raise ConfigError(where, "judge_model", "applies only to kind 'judge'.", "remove it.")
        if self.kind == "inspect":
            if not self.task:
                raise ConfigError(where, "task", "is required for kind 'inspect'.", "name an Inspect task.")
            if self.data is not None:
                raise ConfigError(where, "data", "does not apply to kind 'inspect' (the task has its data).")
        elif self.task is not None:
            raise ConfigError(where, "task", "applies only to kind 'inspect'.", "remove it.")

    @property
    def samples(self) -> bool:
        """Whether this evaluation samples answers (rather than scoring logprobs)."""
        return self.kind in GENERATION_KINDS or self.kind == "inspect"

    def due(self, step: int, eval_every: int) -> bool:
        """Whether it runs before training step ``step`` (> 0) of a run evaluating every ``eval_every`` steps."""
        every = eval_every if self.every is None else self.every
        return bool(every) and step > 0 and step % every == 0


def check_unique_names(specs: tuple[EvalSpec, ...], where: str) -> None:
    """Raise unless every evaluation of a config has its own name (they name metrics and transcripts)."""
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if not isinstance(spec, EvalSpec):
            raise ConfigError(where, f"evals[{index}]", f"expected an evaluation, got {type(spec).__name__}.")
        if spec.name in seen:
            raise ConfigError(where, f"evals[{index}].name", f"{spec.name!r} is used twice.", "give each its own name.")
        seen.add(spec.name)
