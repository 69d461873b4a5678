"""30 Python programming tasks with unit tests for the code environment (:mod:`tinkerflow.rl.envs.code`).

Written for this project (tinkerflow), under the project's license; no outside source. Each entry is
``(entry_point, prompt, reference_solution, tests)``: the tests are ``assert`` statements run after the
candidate's code; the reference solution passes them (``tests/test_tool_use_env.py`` checks every one in the
sandbox, and that a stub returning ``None`` fails). Tasks 0-23 are the training split, 24-29 the held-out split.
"""

from __future__ import annotations

from typing import Final

from tinkerflow.rl.envs.sets import code_tasks_1, code_tasks_2

__all__ = ["CODE_TASKS"]

CODE_TASKS: Final[tuple[tuple[str, str, str, str], ...]] = code_tasks_1.TASKS + code_tasks_2.TASKS
