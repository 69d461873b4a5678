"""The records of an evaluation: what is asked, what was answered, how it scored. Pure.

* :class:`EvalExample`: one item of an evaluation set: the prompt (a conversation ending where the model answers),
  the reference (expected answer text, a baseline answer for a judge, or the conversation's own last assistant
  message for held-out NLL), the choices of a multiple-choice item and the index of the right one.
* :class:`ScoredSample`: one example after the model answered and a scorer graded it (the transcript's row).
* :class:`EvalResult`: an evaluator's summary over a set: the mean score, its standard error, the count, the
  per-example scores and any extra metrics (means of the scorers' sub-scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
from jaxtyping import Float

from tinkerflow._validate import require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ValidationError

__all__ = ["EvalExample", "EvalResult", "EvalRun", "ScoredSample", "mean_and_stderr", "summarize"]


def _messages(value: Conversation | Sequence[Message]) -> tuple[Message, ...]:
    return value.messages if isinstance(value, Conversation) else tuple(value)


def _str_tuple(value: Sequence[str]) -> tuple[str, ...]:
    return tuple(value)


def _str_dict(value: Mapping[str, str]) -> dict[str, str]:
    return {str(key): str(text) for key, text in value.items()}


def _float_dict(value: Mapping[str, float]) -> dict[str, float]:
    return {str(key): float(number) for key, number in value.items()}


@attrs.frozen
class EvalExample:
    """One item of an evaluation set.

    Attributes:
        id: a name unique within the set (transcripts and resume key on it).
        messages: the prompt: the conversation up to where the model answers (for ``nll``: the whole
            conversation, the scored tokens being its last assistant message).
        reference: the expected answer (exact match, regex, JSON, math), the baseline answer a judge compares
            against, or empty where the kind needs none.
        choices: the candidate answers of a multiple-choice item (empty otherwise).
        answer: the index of the right choice (``None`` unless ``choices``).
        metadata: free-form strings carried into the transcript.
    """

    id: str
    messages: tuple[Message, ...] = attrs.field(converter=_messages)
    reference: str = ""
    choices: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    answer: int | None = None
    metadata: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)

    def __attrs_post_init__(self) -> None:
        where = "EvalExample"
        require_type(self.id, str, where, "id")
        require_type(self.reference, str, where, "reference")
        for index, message in enumerate(self.messages):
            require_type(message, Message, where, f"messages[{index}]")
        if not self.messages:
            raise ValidationError(where, "messages", f"example {self.id!r} has no messages.", "give the prompt.")
        if self.choices:
            if self.answer is None or isinstance(self.answer, bool) or not 0 <= self.answer < len(self.choices):
                raise ValidationError(
                    where,
                    "answer",
                    f"example {self.id!r}: {self.answer!r} is not an index into its {len(self.choices)} choices.",
                    "give the 0-based index of the right choice.",
                )
        elif self.answer is not None:
            raise ValidationError(where, "answer", f"example {self.id!r} has an answer but no choices.")

    @property
    def question(self) -> str:
        """The text of the last user message (what transcripts show as the prompt)."""
        users = [message for message in self.messages if message.role == "user"]
        return users[-1].text() if users else self.messages[-1].text()


@attrs.frozen
class ScoredSample:
    """One example, answered and graded: a row of the transcript.

    Attributes:
        id: the example's id.
        prompt: the example's question text.
        response: the model's answer (visible text; for multiple choice the chosen option).
        reference: the example's reference.
        score: the grade (``1.0``/``0.0`` for right/wrong; an NLL for ``nll``; ``1``, ``0.5``, ``0`` for a
            judge's win, tie, loss).
        details: the scorer's sub-scores (e.g. ``json_valid``, ``schema_valid``), averaged into the result.
        logs: strings for the reader (the parse error, the judge's verdicts).
    """

    id: str
    prompt: str
    response: str
    reference: str
    score: float
    details: dict[str, float] = attrs.field(factory=dict, converter=_float_dict)
    logs: dict[str, str] = attrs.field(factory=dict, converter=_str_dict)


@attrs.frozen
class EvalResult:
    """An evaluator's summary over one set.

    Attributes:
        name: the evaluation's name (metrics are logged as ``<name>/<metric>``).
        kind: the scorer (``exact_match``, ``json_match``, ...).
        n: examples scored.
        mean: the mean score (accuracy for 0/1 scores, mean NLL per token for ``nll``, win rate for ``judge``).
        stderr: the standard error of the mean (``sqrt(var / n)`` with the sample variance; 0 for ``n = 1``).
        scores_N: the per-example scores, in example order.
        metrics: extra metrics: the mean of each sub-score of the samples.
    """

    name: str
    kind: str
    n: int
    mean: float
    stderr: float
    scores_N: Float[np.ndarray, " N"]
    metrics: dict[str, float] = attrs.field(factory=dict, converter=_float_dict)

    def as_row(self, prefix: str = "") -> dict[str, float]:
        """The result as metrics-row entries: ``<prefix><name>/<kind or metric>`` and its standard error."""
        head = f"{prefix}{self.name}"
        row = {f"{head}/{self.kind}": self.mean, f"{head}/stderr": self.stderr}
        row.update({f"{head}/{key}": value for key, value in self.metrics.items()})
        return row


@attrs.frozen
class EvalRun:
    """One evaluation's outcome: the summary and every graded sample (the transcript)."""

    result: EvalResult
    samples: tuple[ScoredSample, ...]


def mean_and_stderr(scores_N: np.ndarray) -> tuple[float, float]:
    """The mean of ``scores_N`` and the standard error of that mean (NaN, NaN when empty; stderr 0 for one)."""
    scores = np.asarray(scores_N, dtype=np.float64)
    if scores.size == 0:
        return math.nan, math.nan
    if scores.size == 1:
        return float(scores[0]), 0.0
    return float(scores.mean()), float(scores.std(ddof=1) / math.sqrt(scores.size))


def summarize(name: str, kind: str, samples: Sequence[ScoredSample]) -> EvalResult:
    """The :class:`EvalResult` of graded samples: mean and stderr of the scores, and the mean of each sub-score
    (over the samples that report it)."""
    scores = np.array([sample.score for sample in samples], dtype=np.float64)
    mean, stderr = mean_and_stderr(scores)
    keys = sorted({key for sample in samples for key in sample.details})
    metrics = {
        key: float(np.mean([sample.details[key] for sample in samples if key in sample.details])) for key in keys
    }
    return EvalResult(name, kind, len(samples), mean, stderr, scores, metrics)
