"""Code: write a Python function, graded by running unit tests in a sandbox.

Each task (:mod:`tinkerflow.rl.envs.sets.code_tasks`, 24 for training, 6 held out) asks for one function. The
episode is a :class:`~tinkerflow.rl.envs.tool_use.ToolUseEnv`: the model may try code with the ``run_python`` tool
(the sandbox's status, stdout and stderr come back), and ends with a message holding its solution in a
```` ```python ```` block and no tool call. The grader runs the last such block followed by the task's ``assert``
tests in the sandbox: reward 1 when the run ends ``ok``, 0 otherwise, minus ``format_coef`` when the final
message has no code block. Metrics: ``correct``, ``format`` and ``sandbox_<status>`` of the grading run.

The sandbox is a :class:`~tinkerflow.tools.CodeRunner` passed in (the core runs no processes):
``tinkerflow.shell.sandbox.PythonSandbox()`` in practice, a fake in tests.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import attrs
import numpy as np

from tinkerflow._validate import require_type
from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer
from tinkerflow.rl.envs.base import ProblemBuilder, ProblemGroupBuilder
from tinkerflow.rl.envs.datasets import GeneratedRLDataset
from tinkerflow.rl.envs.sets.code_tasks import CODE_TASKS
from tinkerflow.rl.envs.tool_use import GradeResult, ToolUseEnv, check_agent_options
from tinkerflow.tools import INLINE, CodeRunner, ToolExecutor, ToolRegistry, python_tool

__all__ = [
    "SYSTEM_PROMPT",
    "SYSTEM_PROMPT_NO_TOOL",
    "TAG",
    "CodeOptions",
    "CodeTask",
    "builder",
    "code_tasks",
    "dataset",
    "extract_code",
    "make_env",
    "unit_test_grader",
]

TAG: Final = "code"
SYSTEM_PROMPT: Final = (
    "You write Python functions. You may run code with the run_python tool to test it. "
    "When you are done, reply with the complete solution in one ```python code block and no tool call."
)
#: The system prompt without the tool (``use_tool=False``).
SYSTEM_PROMPT_NO_TOOL: Final = (
    "You write Python functions. Reply with the complete solution in one ```python code block."
)
TRAIN_SPLIT: Final = 24
_BLOCK: Final = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


@attrs.frozen
class CodeTask:
    """A function to write: its name, the task text, a reference solution and ``assert`` tests."""

    entry_point: str
    prompt: str
    solution: str
    tests: str

    def __attrs_post_init__(self) -> None:
        for field in ("entry_point", "prompt", "solution", "tests"):
            require_type(getattr(self, field), str, "CodeTask", field)
        if not self.entry_point.isidentifier():
            raise ConfigError("CodeTask", "entry_point", f"must be a Python name, got {self.entry_point!r}.")


def code_tasks(split: Literal["train", "test", "all"] = "all") -> tuple[CodeTask, ...]:
    """The built-in tasks: the first 24 (``train``), the last 6 (``test``) or all 30."""
    tasks = tuple(CodeTask(*entry) for entry in CODE_TASKS)
    if split == "train":
        return tasks[:TRAIN_SPLIT]
    if split == "test":
        return tasks[TRAIN_SPLIT:]
    if split != "all":
        raise ConfigError("code.code_tasks", "split", f"must be 'train', 'test' or 'all', got {split!r}.")
    return tasks


def extract_code(text: str) -> str | None:
    """The last fenced code block (```` ```python ````, ```` ```py ```` or bare) of ``text``, or ``None``."""
    blocks = _BLOCK.findall(text)
    return str(blocks[-1]) if blocks else None


def unit_test_grader(
    task: CodeTask, runner: CodeRunner, format_coef: float = 0.1
) -> Callable[[tuple[Message, ...]], Awaitable[GradeResult]]:
    """The grader of ``task`` (async): the last assistant message's code plus the tests, run by ``runner``."""

    async def grade(messages: tuple[Message, ...]) -> GradeResult:
        last = next((message for message in reversed(messages) if message.role == "assistant"), None)
        code = extract_code(last.text()) if last is not None else None
        if code is None:
            return -format_coef, {"correct": 0.0, "format": 0.0}
        result = await runner.run(code + "\n\n" + task.tests)
        correct = result.status == "ok"
        return float(correct), {"correct": float(correct), "format": 1.0, f"sandbox_{result.status}": 1.0}

    return grade


@attrs.frozen
class CodeOptions:
    """How a task is posed and graded.

    Attributes:
        runner: the sandbox that runs the tests (and the ``run_python`` tool); required.
        use_tool: offer the ``run_python`` tool.
        max_turns: responses per episode.
        max_tokens: limit of each response.
        format_coef: penalty of a final message without a code block.
        parse_error_reward: reward of a cut-off or unparseable response.
        executor: runs the tool (the sandbox bounds itself, so the default is fine).
    """

    runner: CodeRunner | None = None
    use_tool: bool = True
    max_turns: int = 3
    max_tokens: int | None = 1024
    format_coef: float = 0.1
    parse_error_reward: float = -0.1
    executor: ToolExecutor = INLINE

    def __attrs_post_init__(self) -> None:
        check_agent_options(self, "CodeOptions")
        require_type(self.use_tool, bool, "CodeOptions", "use_tool")


def _runner(options: CodeOptions) -> CodeRunner:
    if options.runner is None:
        raise ConfigError(
            "code",
            "runner",
            "is required: the tests run in a sandbox.",
            "pass runner=tinkerflow.shell.sandbox.PythonSandbox().",
        )
    return options.runner


def make_env(renderer: Renderer, task: CodeTask, options: CodeOptions) -> ToolUseEnv:
    """One episode of ``task``."""
    runner = _runner(options)
    tools = ToolRegistry.of(python_tool(runner)) if options.use_tool else ToolRegistry()
    initial = (
        Message(role="system", content=SYSTEM_PROMPT if options.use_tool else SYSTEM_PROMPT_NO_TOOL),
        Message(role="user", content=task.prompt),
    )
    return ToolUseEnv(
        renderer,
        initial,
        tools,
        unit_test_grader(task, runner, options.format_coef),
        executor=options.executor,
        max_turns=options.max_turns,
        max_tokens=options.max_tokens,
        parse_error_reward=options.parse_error_reward,
    )


#: ``builder(renderer, task, group_size, options)``: ``group_size`` episodes of one task, tagged ``"code"``.
builder: Final = ProblemBuilder(make_env, TAG, CodeOptions(), check=True)


def dataset(
    renderer: Renderer,
    *,
    batch_size: int,
    group_size: int,
    n_batches: int,
    seed: int = 0,
    runner: CodeRunner | None = None,
    split: Literal["train", "test", "all"] = "train",
    use_tool: bool = True,
    max_turns: int = 3,
    max_tokens: int | None = 1024,
    format_coef: float = 0.1,
    executor: ToolExecutor = INLINE,
) -> GeneratedRLDataset:
    """Batches of tasks of ``split`` drawn uniformly (deterministic in ``seed`` and the batch index); ``runner`` is
    required; the other options as in :class:`CodeOptions`."""
    tasks = code_tasks(split)
    options = CodeOptions(
        runner=runner,
        use_tool=use_tool,
        max_turns=max_turns,
        max_tokens=max_tokens,
        format_coef=format_coef,
        executor=executor,
    )
    _runner(options)

    def make(rng: np.random.Generator) -> ProblemGroupBuilder:
        return builder(renderer, tasks[int(rng.integers(len(tasks)))], group_size, options)

    make(np.random.default_rng(0))  # validate the options and the renderer now, not at batch 0
    return GeneratedRLDataset(make, batch_size, n_batches, seed)
