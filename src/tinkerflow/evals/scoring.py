"""Scorers: pure functions from a model's answer (and the example) to a grade. Pure.

Each ``*_score`` function returns ``(score, details)``: the grade and named sub-scores (averaged into the
result's metrics). The effectful runner (:mod:`tinkerflow.shell.evals`) samples the answers; everything that
decides a grade is here, so it is tested without a model.

* :func:`exact_match`: the answer equals the reference (after :func:`normalize_text` unless ``normalize=False``);
* :func:`regex_score`: a regular expression finds the answer (its first group, else the whole match) and it equals
  the reference, or just matches when the reference is empty;
* :func:`json_score`: the whole answer parses as JSON, validates against a JSON schema (when one is given, with
  ``jsonschema``) and equals the reference JSON (when given; ``1`` and ``true`` differ, key order does not);
* :func:`boxed_math_score`: the last ``\\boxed{}`` answer equals the reference after LaTeX normalization (the
  grader of the ``math_boxed`` RL environment);
* :func:`choose_by_logprob`: the multiple-choice pick from the logprobs of each choice's tokens;
* :func:`judge_messages`, :func:`parse_verdict`, :func:`pairwise_score`: a pairwise judge, asked twice with the
  two answers swapped so a judge's preference for a position cancels out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

import numpy as np
from jaxtyping import Float, Int

from tinkerflow.chat import Message
from tinkerflow.errors import ValidationError
from tinkerflow.rl.envs.math_boxed import answers_match, extract_boxed

__all__ = [
    "ChoiceNorm",
    "Verdict",
    "boxed_math_score",
    "choice_scores",
    "choose_by_logprob",
    "exact_match",
    "json_equal",
    "json_score",
    "judge_messages",
    "normalize_text",
    "pairwise_score",
    "parse_verdict",
    "regex_score",
]

#: How choices of different lengths are compared: total logprob (``sum``) or per token (``mean``).
ChoiceNorm: TypeAlias = Literal["sum", "mean"]
#: A judge's answer: which response is better, a tie, or ``None`` when the answer could not be read.
Verdict: TypeAlias = Literal["A", "B", "tie"] | None

_SPACES: Final = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped, case folded, one trailing period dropped."""
    folded = _SPACES.sub(" ", text).strip().casefold()
    return folded[:-1].rstrip() if folded.endswith(".") else folded


def exact_match(response: str, reference: str, *, normalize: bool = True) -> tuple[float, dict[str, float]]:
    """1 when ``response`` equals ``reference`` (both normalized, or only stripped with ``normalize=False``)."""
    if normalize:
        return float(normalize_text(response) == normalize_text(reference)), {}
    return float(response.strip() == reference.strip()), {}


def regex_score(
    response: str, pattern: re.Pattern[str], reference: str, *, normalize: bool = True
) -> tuple[float, dict[str, float]]:
    """Search ``pattern`` in ``response``; the found text is its first group (or the whole match). With an empty
    ``reference`` a match scores 1; otherwise the found text must equal the reference (as :func:`exact_match`).
    ``details["matched"]`` says whether the pattern was found."""
    found = pattern.search(response)
    if found is None:
        return 0.0, {"matched": 0.0}
    text = found.group(1) if pattern.groups else found.group(0)
    if not reference:
        return 1.0, {"matched": 1.0}
    score, _ = exact_match(text or "", reference, normalize=normalize)
    return score, {"matched": 1.0}


def json_equal(left: object, right: object) -> bool:
    """JSON equality: dicts by keys (order ignored), lists in order, and ``true`` is not ``1`` (nor ``1.0``)."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


def json_score(
    response: str, reference: str, schema: Mapping[str, object] | None = None
) -> tuple[float, dict[str, float]]:
    """1 when the whole (stripped) ``response`` parses as JSON, validates against ``schema`` (if given) and equals
    the reference JSON (if ``reference`` is not empty). Sub-scores: ``json_valid``, ``schema_valid`` (with a
    schema), ``exact`` (with a reference).

    Raises:
        ValidationError: ``reference`` is not JSON (a data error, not a wrong answer).
    """
    expected: object = None
    if reference:
        try:
            expected = json.loads(reference)
        except json.JSONDecodeError as error:
            raise ValidationError(
                "json_match", "reference", f"is not JSON ({error.msg} at {error.pos}).", "write the reference as JSON."
            ) from error
    details: dict[str, float] = {}
    try:
        parsed = json.loads(response.strip())
        details["json_valid"] = 1.0
    except (json.JSONDecodeError, RecursionError):
        details["json_valid"] = 0.0
        if schema is not None:
            details["schema_valid"] = 0.0
        if reference:
            details["exact"] = 0.0
        return 0.0, details
    score = 1.0
    if schema is not None:
        import jsonschema  # imported here: only a schema needs it

        valid = jsonschema.validators.validator_for(schema)(schema).is_valid(parsed)
        details["schema_valid"] = float(valid)
        score *= float(valid)
    if reference:
        same = json_equal(parsed, expected)
        details["exact"] = float(same)
        score *= float(same)
    return score, details


def boxed_math_score(response: str, reference: str) -> tuple[float, dict[str, float]]:
    """1 when the last ``\\boxed{}`` answer of ``response`` equals ``reference`` (normalized as the ``math_boxed``
    environment grades). ``details["boxed"]`` says whether a boxed answer was found."""
    given = extract_boxed(response)
    return float(answers_match(given, reference)), {"boxed": float(given is not None)}


def choice_scores(
    logprob_sums_C: Float[np.ndarray, " C"], lengths_C: Int[np.ndarray, " C"], norm: ChoiceNorm = "sum"
) -> Float[np.ndarray, " C"]:
    """The score of each choice: its tokens' total logprob (``sum``) or the mean per token (``mean``)."""
    sums = np.asarray(logprob_sums_C, dtype=np.float64)
    if norm == "sum":
        return sums
    lengths = np.asarray(lengths_C, dtype=np.float64)
    if np.any(lengths < 1):
        raise ValidationError("choice_scores", "lengths_C", "a choice has no tokens.", "give non-empty choices.")
    return sums / lengths


def choose_by_logprob(
    logprob_sums_C: Float[np.ndarray, " C"], lengths_C: Int[np.ndarray, " C"], norm: ChoiceNorm = "sum"
) -> int:
    """The index of the most likely choice (the first on ties; a NaN score never wins)."""
    scores = choice_scores(logprob_sums_C, lengths_C, norm)
    if scores.size == 0:
        raise ValidationError("choose_by_logprob", "logprob_sums_C", "no choices.")
    return int(np.argmax(np.where(np.isnan(scores), -math.inf, scores)))


_JUDGE_SYSTEM: Final = (
    "You compare two answers to the same question. Judge which answer is more helpful, correct and clear. "
    "Reply with exactly one word: A, B, or TIE."
)
_VERDICT: Final = re.compile(r"\b(A|B|TIE)\b")


def judge_messages(question: str, first: str, second: str, criteria: str = "") -> tuple[Message, ...]:
    """The judge's prompt: the question and two answers labelled A (``first``) and B (``second``)."""
    extra = f"\n\nCriteria: {criteria}" if criteria else ""
    body = f"Question:\n{question}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}{extra}\n\nWhich answer is better?"
    return Message(role="system", content=_JUDGE_SYSTEM), Message(role="user", content=body)


def parse_verdict(text: str) -> Verdict:
    """The judge's verdict: the first standalone ``A``, ``B`` or ``TIE`` (any case, brackets allowed), else
    ``None``."""
    found = _VERDICT.search(text.upper())
    if found is None:
        return None
    word = found.group(1)
    return "tie" if word == "TIE" else ("A" if word == "A" else "B")


def _points(verdict: Verdict, model_label: Literal["A", "B"]) -> float:
    if verdict is None or verdict == "tie":
        return 0.5
    return 1.0 if verdict == model_label else 0.0


def pairwise_score(model_first: Verdict, model_second: Verdict) -> tuple[float, dict[str, float]]:
    """The model's points against the reference from two verdicts: ``model_first`` when the model's answer was
    shown as A, ``model_second`` when it was B. A win is 1, a tie or unreadable verdict 0.5, a loss 0; the score
    is the mean of the two. ``details``: ``unreadable`` (share of verdicts not read), ``consistent`` (both orders
    agree on the winner or both tie)."""
    first, second = _points(model_first, "A"), _points(model_second, "B")
    unreadable = (float(model_first is None) + float(model_second is None)) / 2
    return (first + second) / 2, {"unreadable": unreadable, "consistent": float(first == second)}
