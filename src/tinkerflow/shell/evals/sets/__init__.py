"""Offline benchmark sets shipped with tinkerflow, and the reader of question/answer JSONL rows. (Shell: reads
files.)

``grade_school.jsonl``: 42 grade-school arithmetic word problems with integer answers (``{"id", "question",
"answer"}`` per line), written for tinkerflow, CC0 (see README.md here). The ``math_boxed`` benchmark
(:mod:`tinkerflow.shell.evals.benchmarks`) uses them, so benchmarks run and are tested offline.
"""

from __future__ import annotations

import importlib.resources
import json
import pathlib
from collections.abc import Iterable, Iterator
from typing import Final

from tinkerflow.rl.envs.math_boxed import MathProblem
from tinkerflow.rows import DataError

__all__ = ["GRADE_SCHOOL_SET", "jsonl_rows", "load_problem_rows", "offline_problems"]

#: The file name of the grade-school word problems.
GRADE_SCHOOL_SET: Final = "grade_school.jsonl"


def load_problem_rows(rows: Iterable[tuple[str, object]], source: str) -> list[tuple[str, MathProblem]]:
    """``(id, problem)`` of JSON rows ``{"question", "answer"[, "id"]}`` (each given with its name: ``file:line``);
    a row's id is its ``"id"``, else its 0-based position. A bad row raises :class:`DataError` naming it."""
    out: list[tuple[str, MathProblem]] = []
    seen: set[str] = set()
    for index, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(where, "row", "must be a JSON object with question and answer.")
        question, answer, given = row.get("question"), row.get("answer"), row.get("id", str(index))
        if not isinstance(question, str) or not isinstance(answer, str | int) or isinstance(answer, bool):
            raise DataError(where, "row", "needs a string 'question' and a string or integer 'answer'.")
        if not isinstance(given, str | int) or isinstance(given, bool) or str(given) in seen:
            raise DataError(where, "id", f"{given!r} is not a new string or integer id in {source}.")
        seen.add(str(given))
        out.append((str(given), MathProblem(question, str(answer))))
    if not out:
        raise DataError(source, "rows", "holds no problems.")
    return out


def jsonl_rows(path: pathlib.Path, name: str) -> Iterator[tuple[str, object]]:
    """The JSON rows of a JSONL file, each with its name ``name:line`` (blank lines skipped)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                yield f"{name}:{number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{name}:{number}", "line", f"is not JSON: {error}.") from error


def offline_problems(name: str = GRADE_SCHOOL_SET) -> list[tuple[str, MathProblem]]:
    """The problems of an offline set shipped under ``sets/`` (``grade_school.jsonl``), ids prefixed with its stem."""
    resource = importlib.resources.files(__package__ or "tinkerflow.shell.evals.sets").joinpath(name)
    with importlib.resources.as_file(resource) as path:
        rows = load_problem_rows(jsonl_rows(path, name), name)
    stem = name.rsplit(".", 1)[0]
    return [(f"{stem}/{item_id}", problem) for item_id, problem in rows]
