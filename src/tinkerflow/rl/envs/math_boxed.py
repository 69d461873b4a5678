r"""Math problems graded on the last ``\boxed{...}`` answer (for real models, e.g. on Tinker).

* :func:`extract_boxed`: the content of the last ``\boxed{...}`` (braces matched, nested boxes allowed; the
  cookbook's rule), or of ``\boxed N`` without braces.
* :func:`normalize_answer` / :func:`answers_match`: answers compare equal when their normalized strings are
  equal (LaTeX spacing, ``\left``/``\right``, ``\text{}``, ``$``, degrees, percent signs, thousands separators,
  ``\dfrac`` and ``x =`` prefixes removed; ``\frac{a}{b}`` written ``a/b``) or when both are numbers
  (integers, decimals, fractions) of equal value. No symbolic algebra: ``2\sqrt{2}`` and ``\sqrt{8}`` differ.
  Unlike the cookbook's sympy grader, an unreduced fraction equals its reduced form (``2/4`` = ``1/2``).
* :data:`MATH_PROBLEMS`: a few built-in problems (tests, smoke runs); load real datasets yourself and convert
  their rows with :func:`problems_from_rows`.

Reward (:class:`~tinkerflow.rl.envs.base.ProblemEnv`): 1 for a correct boxed answer, minus ``format_coef``
unless the reply holds a boxed answer and ends on the stop sequence.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Final

import attrs

from tinkerflow._validate import check_text, require_type
from tinkerflow.chat import Message
from tinkerflow.chat_format import ChatFormatError, check_keys, decode_json_line
from tinkerflow.errors import ValidationError
from tinkerflow.render import Renderer
from tinkerflow.rl.envs.base import ProblemBuilder, ProblemEnv, ProblemOptions
from tinkerflow.rl.envs.datasets import ListRLDataset

__all__ = [
    "BOXED_INSTRUCTION",
    "MATH_PROBLEMS",
    "OTHER_PROBLEM_KEYS",
    "TAG",
    "MathProblem",
    "answers_match",
    "builder",
    "dataset",
    "extract_boxed",
    "fewshot_prefix",
    "has_boxed",
    "make_env",
    "normalize_answer",
    "numeric_value",
    "parse_problem_line",
    "problem_from_json",
    "problems_from_rows",
]

TAG: Final = "math"
BOXED_INSTRUCTION: Final = " Write your answer in \\boxed{} format."


@attrs.frozen
class MathProblem:
    """A question and its reference answer (LaTeX, as it would appear inside ``\\boxed{}``)."""

    question: str
    answer: str

    def __attrs_post_init__(self) -> None:
        require_type(self.question, str, "MathProblem", "question")
        require_type(self.answer, str, "MathProblem", "answer")
        if not self.answer.strip():
            raise ValidationError("MathProblem", "answer", "is empty.", "give the reference answer.")


#: Small built-in problems with integer or fraction answers.
MATH_PROBLEMS: Final[tuple[MathProblem, ...]] = (
    MathProblem("What is $3 \\times 7 + 2$?", "23"),
    MathProblem("Simplify $\\frac{6}{8}$.", "\\frac{3}{4}"),
    MathProblem("What is the sum of the first 10 positive integers?", "55"),
    MathProblem("If $2x + 3 = 11$, what is $x$?", "4"),
    MathProblem("What is $15\\%$ of $80$?", "12"),
    MathProblem("How many positive divisors does $12$ have?", "6"),
    MathProblem("What is the remainder when $100$ is divided by $7$?", "2"),
    MathProblem("Compute $2^{10}$.", "1024"),
)

_BOXED_BARE = re.compile(r"\\boxed\s+([a-zA-Z0-9]+)")


def extract_boxed(text: str) -> str | None:
    r"""The content of the ``\boxed{...}`` that closes last (braces matched), else of the last ``\boxed N``
    (letters and digits), else ``None``. Unmatched closing braces are ignored."""
    found: str | None = None
    stack: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            start = stack.pop()
            if text.endswith("\\boxed", 0, start):
                found = text[start + 1 : index]
    if found is not None:
        return found
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None


def has_boxed(text: str) -> bool:
    """Whether the reply holds a boxed answer (the format check)."""
    return extract_boxed(text) is not None


_SPACING = re.compile(r"\\[!,;: ]|\\quad|\\qquad|\\displaystyle|\\left|\\right")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_FRAC = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_DIGITS = re.compile(r"\\frac\s*(\d)\s*(\d)")
_VARIABLE = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_THOUSANDS = re.compile(r"(\d),(\d{3})(?!\d)")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_RATIO = re.compile(r"(-?)\(?(-?\d+)\)?/\(?(-?\d+)\)?")


def normalize_answer(answer: str) -> str:
    """A canonical string for comparing answers (see the module docstring)."""
    text = answer.strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _SPACING.sub("", text)
    text = text.replace("\\$", "").replace("$", "")
    previous = None
    while previous != text:
        previous = text
        text = _TEXT.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = text.replace("\\%", "").replace("%", "")
    text = _VARIABLE.sub("", text)
    text = _FRAC.sub(r"\1/\2", text)
    text = _FRAC_DIGITS.sub(r"\1/\2", text)
    text = text.replace(" ", "").replace("\n", "")
    previous = None
    while previous != text:
        previous = text
        text = _THOUSANDS.sub(r"\1\2", text)
    while len(text) > 1 and text[0] == "{" and text[-1] == "}" and _balanced(text[1:-1]):
        text = text[1:-1]
    text = text.rstrip(".")
    return text.lower()


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += 1 if char == "{" else -1 if char == "}" else 0
        if depth < 0:
            return False
    return depth == 0


def numeric_value(answer: str) -> Fraction | None:
    """The exact value of a normalized answer that is an integer, a decimal or a fraction ``a/b``; else ``None``."""
    text = answer
    if _NUMBER.fullmatch(text):
        return Fraction(text)
    ratio = _RATIO.fullmatch(text)
    if ratio and int(ratio.group(3)) != 0:
        value = Fraction(int(ratio.group(2)), int(ratio.group(3)))
        return -value if ratio.group(1) else value
    return None


def answers_match(given: str | None, reference: str) -> bool:
    """Whether ``given`` is ``reference``: equal normalized strings, or numbers of equal value."""
    if given is None:
        return False
    a, b = normalize_answer(given), normalize_answer(reference)
    if not a:
        return False
    if a == b:
        return True
    value_a, value_b = numeric_value(a), numeric_value(b)
    return value_a is not None and value_a == value_b


def _grader(reference: str, text: str) -> bool:
    return answers_match(extract_boxed(text), reference)


def fewshot_prefix() -> tuple[Message, ...]:
    """One worked example with a boxed answer."""
    return (
        Message(role="user", content="What is $6 \\times 7$?" + BOXED_INSTRUCTION),
        Message(role="assistant", content="Six sevens are $42$, so the answer is \\boxed{42}."),
    )


_DEFAULTS: Final = ProblemOptions()


def make_env(renderer: Renderer, problem: MathProblem, options: ProblemOptions = _DEFAULTS) -> ProblemEnv:
    """A single-use environment for ``problem`` (``options.fewshot``: put :func:`fewshot_prefix` first)."""
    return ProblemEnv(
        renderer,
        problem.question + BOXED_INSTRUCTION,
        functools.partial(_grader, problem.answer),
        format_check=has_boxed,
        prefix=fewshot_prefix() if options.fewshot else (),
        reference_answer=problem.answer,
        format_coef=options.format_coef,
        max_tokens=options.max_tokens,
    )


#: ``builder(renderer, problem, group_size, options)``: ``group_size`` environments for ``problem``, tagged
#: ``"math"``.
builder: Final = ProblemBuilder(make_env, TAG, _DEFAULTS)


def dataset(
    renderer: Renderer,
    problems: Sequence[MathProblem] = MATH_PROBLEMS,
    *,
    batch_size: int,
    group_size: int,
    seed: int = 0,
    epochs: int = 1,
    fewshot: bool = True,
    format_coef: float = 0.1,
    max_tokens: int | None = None,
) -> ListRLDataset:
    """The problems in batches of ``batch_size`` (shuffled per epoch with ``seed``), ``group_size`` samples each;
    ``fewshot``, ``format_coef`` and ``max_tokens`` as in :class:`~tinkerflow.rl.envs.base.ProblemOptions`."""
    options = ProblemOptions(fewshot=fewshot, format_coef=format_coef, max_tokens=max_tokens)
    builders = [builder(renderer, problem, group_size, options) for problem in problems]
    return ListRLDataset(builders, batch_size, seed, epochs=epochs)


#: Keys a math problem row may have besides its question and answer keys.
OTHER_PROBLEM_KEYS: Final = frozenset({"id"})


def problem_from_json(
    row: object, where: str, *, question_key: str = "problem", answer_key: str = "answer"
) -> MathProblem:
    r"""One data row (a JSON object) -> :class:`MathProblem`, strictly: the question under ``question_key``, the
    answer under ``answer_key`` (a bare answer, or a solution whose last ``\boxed{}`` is the answer), and no key
    but those and ``id``.

    Raises:
        ChatFormatError: the row is not an object, has an unknown key (the closest known keys are the fix), or
            lacks a usable question or answer; ``where`` names the row, the field names the key.
    """
    if not isinstance(row, Mapping):
        raise ChatFormatError(where, "row", f"must be a JSON object, got {type(row).__name__}.")
    check_keys(row, {question_key, answer_key, *OTHER_PROBLEM_KEYS}, where, "", "a math problem row")
    values: dict[str, str] = {}
    for key in (question_key, answer_key):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if value is None else f"{type(value).__name__} {value!r}"[:60]
            raise ChatFormatError(
                where, key, f"must be a non-empty string, got {got}.", "set question_key / answer_key in env_args."
            )
        values[key] = check_text(value, where, key)
    answer = values[answer_key]
    boxed = extract_boxed(answer) if "\\boxed" in answer else answer
    if boxed is None or not boxed.strip():
        raise ChatFormatError(where, answer_key, "holds a \\boxed{} with no answer in it.", "fix or drop the row.")
    return MathProblem(values[question_key], boxed.strip())


def parse_problem_line(
    line: bytes | str, where: str, *, question_key: str = "problem", answer_key: str = "answer"
) -> MathProblem:
    """One JSONL line -> :class:`MathProblem` (:func:`problem_from_json`); invalid UTF-8 or JSON is a
    :class:`~tinkerflow.chat_format.ChatFormatError`."""
    return problem_from_json(decode_json_line(line, where), where, question_key=question_key, answer_key=answer_key)


def problems_from_rows(
    rows: Iterable[Mapping[str, object]], *, question_key: str = "problem", answer_key: str = "answer"
) -> tuple[MathProblem, ...]:
    r"""Problems from dataset rows (dicts). The answer field may be a bare answer or a full solution, in which
    case its last ``\boxed{}`` is the answer. A row without a usable answer raises, naming the row."""
    problems: list[MathProblem] = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValidationError(
                "math_boxed.problems_from_rows",
                f"rows[{index}]",
                f"must be a mapping (a dict of columns), got {type(row).__name__}.",
                "pass the dataset's rows as dicts.",
            )
        question, answer = row.get(question_key), row.get(answer_key)
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ValidationError(
                "math_boxed.problems_from_rows",
                f"rows[{index}]",
                f"needs string fields {question_key!r} and {answer_key!r}.",
                "pass question_key/answer_key naming the dataset's columns.",
            )
        boxed = extract_boxed(answer) if "\\boxed" in answer else answer
        if boxed is None or not boxed.strip():
            raise ValidationError(
                "math_boxed.problems_from_rows", f"rows[{index}].{answer_key}", "holds no answer.", "drop the row."
            )
        problems.append(MathProblem(question, boxed.strip()))
    return tuple(problems)
