"""Tool use: a multi-turn environment that runs the model's tool calls, and a calculator word-problem example.

:class:`ToolUseEnv` (a :class:`~tinkerflow.rl.envs.base.MessageEnv`) declares its tools to the model through the
renderer (each family's own tool format: the specs travel with the conversation), parses each response with the
renderer and then:

* a response with tool calls: every call is run in order (:func:`~tinkerflow.tools.run_call`, through the
  ``executor``, which enforces per-call time limits in the shell: ``tinkerflow.shell.sandbox.TimedToolExecutor``)
  and answered with a ``tool`` message; a call to an unknown tool, with bad arguments, that raised or ran past its
  limit is answered with an error observation (``{"error": kind, "message": ...}``), never a crash. Reward 0, the
  episode goes on, unless the turn cap is reached or a tool asked to stop (then it is graded);
* a response without tool calls is the final answer: the episode ends and ``grader(conversation)`` gives the
  reward (and metrics);
* a response cut off (no stop sequence) or with a tool call that cannot be parsed (bad JSON, unterminated block)
  is a parse error: reward ``parse_error_reward``, episode over, ``parse_error=True`` (and the turn masked with
  ``mask_parse_errors``), as the cookbook's ``AgentToolMessageEnv`` does by default. Unlike the cookbook, a turn
  that mixes valid and unparseable calls is a parse error too (the cookbook runs the valid ones and continues).

These are the cookbook's ``build_agent_tool_env`` semantics (``tool_execution="sequential"``); the differential test
``tests/conformance/test_tool_use_cookbook.py`` checks tokens, rewards and datums against it.

The example, :func:`dataset`: arithmetic word problems (:mod:`tinkerflow.rl.envs.sets.word_problems`, 48 for
training, 12 held out) with the calculator tool; the model ends with ``Answer: N``; reward 1 for the right number
(compared exactly), minus ``format_coef`` when the final message has no ``Answer:`` line. For small models and
renderers without a tool format (off by default): ``problem_set="one_step"`` (one operation per problem,
:mod:`tinkerflow.rl.envs.sets.one_step_problems`), ``tool_format="text"`` (calls are ``calculator: EXPRESSION``
lines of the response, :func:`text_tool_calls`), ``fewshot`` worked examples and ``end_on_parse_error=False``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from fractions import Fraction
from typing import Final, Literal, Protocol, TypeAlias

import attrs
import numpy as np

from tinkerflow._validate import in_range, int_at_least, positive_int, require_type
from tinkerflow.chat import Conversation, Message, ToolCall
from tinkerflow.errors import ConfigError, NonFiniteError
from tinkerflow.render import Renderer, Termination
from tinkerflow.rl.envs.base import MessageEnv, MessageStep, ProblemBuilder, ProblemGroupBuilder
from tinkerflow.rl.envs.datasets import GeneratedRLDataset
from tinkerflow.rl.envs.sets.one_step_problems import ONE_STEP_PROBLEMS
from tinkerflow.rl.envs.sets.word_problems import WORD_PROBLEMS
from tinkerflow.tools import CALCULATOR, INLINE, ToolExecutor, ToolRegistry, run_call

__all__ = [
    "PROBLEM_SETS",
    "SYSTEM_PROMPT",
    "TAG",
    "TEXT_EXAMPLES",
    "TEXT_SYSTEM_PROMPT",
    "AgentOptions",
    "GradeResult",
    "Grader",
    "ToolFormat",
    "ToolUseEnv",
    "WordProblem",
    "WordProblemOptions",
    "answer_grader",
    "builder",
    "check_agent_options",
    "dataset",
    "make_env",
    "parse_final_answer",
    "text_parameter",
    "text_tool_calls",
    "word_problems",
]

TAG: Final = "word_problems"
#: ``(reward, metrics)`` of a finished episode.
GradeResult: TypeAlias = tuple[float, Mapping[str, float]]
#: Grades the whole conversation (initial messages included) once the episode ends; may be async.
Grader: TypeAlias = Callable[[tuple[Message, ...]], GradeResult | Awaitable[GradeResult]]

SYSTEM_PROMPT: Final = (
    "You solve word problems. Use the calculator tool for every computation. "
    "When you know the result, reply with a last line 'Answer: N' and no tool call."
)
#: The system prompt of ``tool_format="text"``: calls are lines the model writes, for renderers with no tool format.
TEXT_SYSTEM_PROMPT: Final = (
    "Use the calculator. To compute, reply with one line 'calculator: EXPRESSION' and nothing else; the result "
    "comes back as 'calculator: RESULT'. When you know the result, reply 'Answer: N'."
)
#: ``tool_format``: ``"native"`` (the renderer declares the tools and parses calls in the family's format) or
#: ``"text"`` (calls are lines ``name: argument`` in the response text, results come back as a user message).
ToolFormat: TypeAlias = Literal["native", "text"]
#: Worked examples of the text format (``fewshot``): ``(question, expression, answer)``, in neither split.
TEXT_EXAMPLES: Final[tuple[tuple[str, str, str], ...]] = (
    ("A box holds 14 pens. How many pens are in 23 boxes?", "14 * 23", "322"),
    ("Sara has 415 stamps and gives away 128. How many stamps does she have left?", "415 - 128", "287"),
    ("A bakery bakes 96 rolls a day. How many rolls does it bake in 15 days?", "96 * 15", "1440"),
)
_ANSWER: Final = re.compile(r"Answer:\s*\$?\s*(-?[\d,]*\.?\d+)")
TRAIN_SPLIT: Final = 48


def _turn_metrics(outcomes: Sequence[object], errors: int) -> dict[str, float]:
    return {"tool_calls": float(len(outcomes)), "tool_errors": float(errors)}


def text_parameter(registry: ToolRegistry, name: str) -> str:
    """The one required string parameter of tool ``name``: what a text call ``name: argument`` sets (a
    ``ConfigError`` for a tool that has another shape: the text format cannot call it)."""
    schema = registry.get(name).spec().parameters_dict()
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if isinstance(properties, dict) and isinstance(required, list) and len(required) == 1:
        (parameter,) = required
        declared = properties.get(parameter)
        if len(properties) == 1 and isinstance(declared, dict) and declared.get("type") == "string":
            return str(parameter)
    raise ConfigError(
        "ToolUseEnv",
        f"tools.{name}",
        "takes other arguments than one string: a text call 'name: argument' cannot call it.",
        "use tool_format='native', or a tool with a single string parameter.",
    )


def text_tool_calls(text: str, registry: ToolRegistry, argument_end: str | None = None) -> tuple[ToolCall, ...]:
    """The calls in ``text`` written as lines ``name: argument`` (``tool_format="text"``): a line that starts with
    a tool's name (case-insensitive, spaces around the colon allowed) calls it with the rest of the line as its
    string parameter (:func:`text_parameter`), cut before ``argument_end`` when given (the word problems pass
    ``"="``: small models write ``calculator: 3 * 4 = 12``). Other lines, ``Answer: N`` among them, are not calls."""
    names = {name.lower(): name for name in registry.names()}
    calls: list[ToolCall] = []
    for line in text.splitlines():
        head, colon, rest = line.partition(":")
        name = names.get(head.strip().lower())
        rest = rest.split(argument_end, 1)[0] if argument_end else rest
        if colon and name is not None and rest.strip():
            calls.append(ToolCall.create(name, {text_parameter(registry, name): rest.strip()}))
    return tuple(calls)


class ToolUseEnv(MessageEnv):
    """One episode of tool use (see the module docstring).

    Args:
        renderer: renders the conversation (with the tools declared) and parses responses; needs tool support.
        initial: the conversation before the first response.
        tools: the tools the model may call (declared after any tools of ``initial``).
        grader: ``conversation -> (reward, metrics)`` (or an awaitable of it), called once at the end.
        executor: runs each tool function (:data:`~tinkerflow.tools.INLINE`: no time limit).
        max_turns: responses before the episode is graded regardless (the cookbook's ``max_turns``).
        max_tokens: limit of each response.
        parse_error_reward: reward of a cut-off or unparseable response.
        mask_parse_errors: mask such turns out of training.
        max_observation_tokens: end the episode when the next observation would be longer.
        tool_format: ``"native"``: the renderer declares the tools in its family's format and parses the calls;
            ``"text"``: for renderers without a tool format (the embedded SmolLM2), the tools are not declared
            (say how to call them in the prompt), calls are lines ``name: argument`` of the response
            (:func:`text_tool_calls`; each tool needs one string parameter) and their results come back as one
            ``user`` message of lines ``name: result``.
        text_argument_end: with ``tool_format="text"``, a text call's argument ends before this string.
        end_on_parse_error: ``False`` keeps the episode going after a malformed response (it still gets
            ``parse_error_reward``): with the text format, the complete lines of a cut-off response still run
            (its last, cut line only when its argument was ended by ``text_argument_end``).
    """

    def __init__(
        self,
        renderer: Renderer,
        initial: Conversation | Sequence[Message],
        tools: ToolRegistry,
        grader: Grader,
        *,
        executor: ToolExecutor = INLINE,
        max_turns: int = 5,
        max_tokens: int | None = None,
        parse_error_reward: float = -0.1,
        mask_parse_errors: bool = False,
        max_observation_tokens: int | None = None,
        tool_format: ToolFormat = "native",
        text_argument_end: str | None = None,
        end_on_parse_error: bool = True,
    ) -> None:
        where = "ToolUseEnv"
        require_type(tools, ToolRegistry, where, "tools")
        if tool_format not in ("native", "text"):
            raise ConfigError(where, "tool_format", f"must be 'native' or 'text', got {tool_format!r}.")
        for name in tools.names() if tool_format == "text" else ():
            text_parameter(tools, name)
        if tool_format == "native" and len(tools) and not renderer.supports_tools:
            raise ConfigError(
                where, "renderer", f"the {renderer.name} renderer has no tool format.", "use one with tool support."
            )
        if not callable(grader):
            raise ConfigError(where, "grader", f"must be callable, got {type(grader).__name__}.")
        super().__init__(
            renderer,
            initial,
            tools=tools.specs() if tool_format == "native" else (),
            max_tokens=max_tokens,
            parse_error_reward=parse_error_reward,
            end_on_parse_error=end_on_parse_error,
            mask_parse_errors=mask_parse_errors,
            max_observation_tokens=max_observation_tokens,
        )
        self.registry = tools
        self.grader = grader
        self.executor = executor
        self.max_turns = positive_int(max_turns, where, "max_turns")
        self.tool_format: ToolFormat = tool_format
        self.text_argument_end = text_argument_end
        self.tool_calls = 0

    async def _grade(self) -> GradeResult:
        result = self.grader(self.messages)
        if inspect.isawaitable(result):
            result = await result
        if not (isinstance(result, tuple) and len(result) == 2):
            raise ConfigError("ToolUseEnv", "grader", f"must return (reward, metrics), got {result!r}.")
        reward, metrics = result
        if isinstance(reward, bool) or not isinstance(reward, int | float) or not np.isfinite(reward):
            raise NonFiniteError("ToolUseEnv", "grader", f"returned the reward {reward!r}.", "return a finite number.")
        return float(reward), metrics

    async def respond(self, message: Message, termination: Termination) -> MessageStep:
        capped = self.turns >= self.max_turns
        text = self.tool_format == "text"
        written = message.text()
        if termination is Termination.MALFORMED:  # cut off: the last line is complete only up to argument_end
            done, _, last = written.rpartition("\n")
            end = self.text_argument_end
            written = f"{done}\n{last.partition(end)[0]}{end}" if end and end in last else done
        calls = text_tool_calls(written, self.registry, self.text_argument_end) if text else message.tool_calls
        if not calls:
            reward, graded = await self._grade()
            used = {"used_tool": float(self.tool_calls > 0)} if text else {}
            return MessageStep(
                reward=reward, done=True, metrics={**graded, "tool_turns": float(self.turns - 1), **used}
            )
        replies: list[Message] = []
        logs: dict[str, str] = {}
        errors = 0
        stop = False
        metrics: dict[str, float] = {}
        for index, call in enumerate(calls):
            outcome = await run_call(self.registry, call, self.executor)
            replies.append(outcome.message(f"call_{self.turns}_{index}"))
            logs[f"tool_call_{index}"] = f"{call.name}({call.arguments})"
            logs[f"tool_result_{index}"] = outcome.content
            errors += outcome.error is not None
            if outcome.error is not None:
                metrics[f"tool_error/{outcome.error}"] = metrics.get(f"tool_error/{outcome.error}", 0.0) + 1.0
            stop = stop or outcome.done
            metrics.update({f"tool/{key}": value for key, value in outcome.metrics.items()})
        self.tool_calls += len(calls)
        if text:  # one user message: the renderer may have no tool role
            lines = (f"{call.name}: {reply.text()}" for call, reply in zip(calls, replies, strict=True))
            replies = [Message(role="user", content="\n".join(lines))]
        self.messages = (*self.messages, *replies)
        metrics.update(_turn_metrics(calls, errors))
        if capped or stop:
            reward, final = await self._grade()
            extra = {"max_turns": 1.0} if capped and not stop else {"tool_stopped": 1.0}
            if text:
                extra["used_tool"] = 1.0
            return MessageStep(reward=reward, done=True, metrics={**metrics, **final, **extra}, logs=logs)
        return MessageStep(reward=0.0, done=False, metrics=metrics, logs=logs)


# -- the calculator word-problem example ----------------------------------------------------------------------


@attrs.frozen
class WordProblem:
    """A question and its exact answer (a decimal string)."""

    question: str
    answer: str

    def __attrs_post_init__(self) -> None:
        require_type(self.question, str, "WordProblem", "question")
        if _number(self.answer) is None:
            raise ConfigError("WordProblem", "answer", f"must be a decimal number, got {self.answer!r}.")


#: The built-in problem sets: ``word_problems`` (one to three operations, the default) and ``one_step`` (one
#: operation on larger numbers: an easier tier for small models). Each has 60 problems, 48 train / 12 held out.
PROBLEM_SETS: Final = ("word_problems", "one_step")
ProblemSet: TypeAlias = Literal["word_problems", "one_step"]


def word_problems(
    split: Literal["train", "test", "all"] = "all", problem_set: ProblemSet = "word_problems"
) -> tuple[WordProblem, ...]:
    """The problems of ``problem_set`` (:data:`PROBLEM_SETS`): the first 48 (``train``), the last 12 (``test``)
    or all 60."""
    if problem_set == "word_problems":
        problems = tuple(WordProblem(question, answer) for question, answer in WORD_PROBLEMS)
    elif problem_set == "one_step":
        problems = tuple(WordProblem(question, answer) for question, _, answer in ONE_STEP_PROBLEMS)
    else:
        raise ConfigError(
            "tool_use.word_problems", "problem_set", f"must be one of {PROBLEM_SETS}, got {problem_set!r}."
        )
    if split == "train":
        return problems[:TRAIN_SPLIT]
    if split == "test":
        return problems[TRAIN_SPLIT:]
    if split != "all":
        raise ConfigError("tool_use.word_problems", "split", f"must be 'train', 'test' or 'all', got {split!r}.")
    return problems


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text.replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def parse_final_answer(text: str) -> Fraction | None:
    """The number after the last ``Answer:`` (thousands separators and a ``$`` allowed), exactly; or ``None``."""
    found = _ANSWER.findall(text)
    return _number(found[-1]) if found else None


def answer_grader(answer: str, format_coef: float = 0.1) -> Callable[[tuple[Message, ...]], GradeResult]:
    """A grader of the last assistant message: 1 when its ``Answer:`` equals ``answer`` exactly, minus
    ``format_coef`` when it has no ``Answer:`` at all."""
    expected = _number(answer)

    def grade(messages: tuple[Message, ...]) -> GradeResult:
        last = next((message for message in reversed(messages) if message.role == "assistant"), None)
        given = parse_final_answer(last.text()) if last is not None else None
        correct = given is not None and given == expected
        formatted = given is not None
        used = sum(message.role == "tool" for message in messages)
        reward = float(correct) + format_coef * (float(formatted) - 1.0)
        return reward, {"correct": float(correct), "format": float(formatted), "tool_results": float(used)}

    return grade


@attrs.frozen
class WordProblemOptions:
    """How a word problem is posed and graded.

    Attributes:
        max_turns: responses per episode (tool calls and the final answer).
        max_tokens: limit of each response (``None``: none).
        format_coef: penalty of a final message without ``Answer:``.
        parse_error_reward: reward of a cut-off or unparseable response.
        executor: runs the calculator (the shell passes a timed one).
        tool_format: ``"native"`` (the renderer's tool format) or ``"text"`` (``calculator: EXPRESSION`` lines
            and :data:`TEXT_SYSTEM_PROMPT`; see :class:`ToolUseEnv`).
        fewshot: worked examples (:data:`TEXT_EXAMPLES`, 0 to 3) put before the question as earlier turns of the
            conversation; only with ``tool_format="text"``.
        end_on_parse_error: ``False``: a cut-off response is penalized (``parse_error_reward``) but the episode
            goes on (its complete call lines run with the text format); see :class:`ToolUseEnv`.
    """

    max_turns: int = 4
    max_tokens: int | None = 256
    format_coef: float = 0.1
    parse_error_reward: float = -0.1
    executor: ToolExecutor = INLINE
    tool_format: ToolFormat = "native"
    fewshot: int = 0
    end_on_parse_error: bool = True

    def __attrs_post_init__(self) -> None:
        where = "WordProblemOptions"
        check_agent_options(self, where)
        if self.tool_format not in ("native", "text"):
            raise ConfigError(where, "tool_format", f"must be 'native' or 'text', got {self.tool_format!r}.")
        require_type(self.end_on_parse_error, bool, where, "end_on_parse_error")
        if not isinstance(self.fewshot, int) or isinstance(self.fewshot, bool):
            raise ConfigError(where, "fewshot", f"must be an int, got {self.fewshot!r}.")
        in_range(self.fewshot, where, "fewshot", low=0, high=len(TEXT_EXAMPLES))
        if self.fewshot and self.tool_format != "text":
            raise ConfigError(
                where, "fewshot", "worked examples are written in the text format.", "set tool_format='text'."
            )


class AgentOptions(Protocol):
    """What every agent environment's options have (:class:`WordProblemOptions`, ``code.CodeOptions``)."""

    @property
    def max_turns(self) -> int: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def format_coef(self) -> float: ...
    @property
    def parse_error_reward(self) -> float: ...


def check_agent_options(options: AgentOptions, where: str) -> None:
    """Check the options every agent environment has, naming ``where`` in errors."""
    positive_int(options.max_turns, where, "max_turns")
    int_at_least(options.max_tokens, where, "max_tokens", allow_none=True)
    in_range(options.format_coef, where, "format_coef", low=0.0)
    in_range(options.parse_error_reward, where, "parse_error_reward")


_DEFAULTS: Final = WordProblemOptions()
_TOOLS: Final = ToolRegistry.of(CALCULATOR)


def make_env(renderer: Renderer, problem: WordProblem, options: WordProblemOptions = _DEFAULTS) -> ToolUseEnv:
    """One episode of ``problem`` with the calculator."""
    system = TEXT_SYSTEM_PROMPT if options.tool_format == "text" else SYSTEM_PROMPT
    examples = tuple(
        message
        for question, expression, answer in TEXT_EXAMPLES[: options.fewshot]
        for message in (
            Message(role="user", content=question),
            Message(role="assistant", content=f"calculator: {expression}"),
            Message(role="user", content=f"calculator: {answer}"),
            Message(role="assistant", content=f"Answer: {answer}"),
        )
    )
    initial = (
        Message(role="system", content=system),
        *examples,
        Message(role="user", content=problem.question),
    )
    return ToolUseEnv(
        renderer,
        initial,
        _TOOLS,
        answer_grader(problem.answer, options.format_coef),
        executor=options.executor,
        max_turns=options.max_turns,
        max_tokens=options.max_tokens,
        parse_error_reward=options.parse_error_reward,
        tool_format=options.tool_format,
        text_argument_end="=" if options.tool_format == "text" else None,
        end_on_parse_error=options.end_on_parse_error,
    )


#: ``builder(renderer, problem, group_size, options)``: ``group_size`` episodes of one problem, tagged
#: ``"word_problems"`` (one is made at once, so a renderer without tools fails there).
builder: Final = ProblemBuilder(make_env, TAG, _DEFAULTS, check=True)


def dataset(
    renderer: Renderer,
    *,
    batch_size: int,
    group_size: int,
    n_batches: int,
    seed: int = 0,
    split: Literal["train", "test", "all"] = "train",
    max_turns: int = 4,
    max_tokens: int | None = 256,
    format_coef: float = 0.1,
    executor: ToolExecutor = INLINE,
    problem_set: ProblemSet = "word_problems",
    tool_format: ToolFormat = "native",
    fewshot: int = 0,
    end_on_parse_error: bool = True,
) -> GeneratedRLDataset:
    """Batches of problems of ``split`` of ``problem_set`` drawn uniformly (deterministic in ``seed`` and the
    batch index); the other options as in :class:`WordProblemOptions`."""
    problems = word_problems(split, problem_set)
    options = WordProblemOptions(
        max_turns=max_turns,
        max_tokens=max_tokens,
        format_coef=format_coef,
        executor=executor,
        tool_format=tool_format,
        fewshot=fewshot,
        end_on_parse_error=end_on_parse_error,
    )

    def make(rng: np.random.Generator) -> ProblemGroupBuilder:
        return builder(renderer, problems[int(rng.integers(len(problems)))], group_size, options)

    make(np.random.default_rng(0))  # validate the options and the renderer now, not at batch 0
    return GeneratedRLDataset(make, batch_size, n_batches, seed)
