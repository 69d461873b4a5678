"""Tool-use environments (``tinkerflow.rl.envs.tool_use``, ``tinkerflow.rl.envs.code``) driven by scripted model
outputs on the offline Qwen3 vocabulary, and the problem sets they ship with."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from fractions import Fraction
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.render import Renderer, get_renderer
from tinkerflow.rl.envs import code, tool_use
from tinkerflow.rl.envs.tool_use import ToolUseEnv
from tinkerflow.rl.types import StepResult
from tinkerflow.sampling import SampledSequence
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.shell.sandbox import PythonSandbox, TimedToolExecutor
from tinkerflow.tools import CALCULATOR, SandboxResult, Tool, ToolRegistry, evaluate

T = TypeVar("T")


def run(coroutine: Coroutine[object, object, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def qwen() -> Renderer:
    return get_renderer("qwen3_instruct", offline_tokenizer("qwen3"))


def action(renderer: Renderer, text: str, calls: Sequence[str] = (), *, stop: bool = True) -> SampledSequence:
    """The tokens a Qwen3 model samples for ``text`` then one ``<tool_call>`` block per JSON body."""
    tokenizer = renderer.tokenizer
    tokens = list(tokenizer.encode(text)) if text else []
    for index, body in enumerate(calls):
        if index or text:
            tokens += tokenizer.encode("\n")
        tokens += [
            tokenizer.token_id("<tool_call>"),
            *tokenizer.encode(f"\n{body}\n"),
            tokenizer.token_id("</tool_call>"),
        ]
    if stop:
        tokens.append(renderer.stop_sequences().tokens[0])
    return SampledSequence(
        tokens_T=tokens, stop_reason="stop" if stop else "length", logprobs_T=np.full(len(tokens), -0.25)
    )


def call(name: str, **arguments: object) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def decoded(renderer: Renderer, step: StepResult) -> str:
    return renderer.tokenizer.decode(step.next_observation.to_tokens())


def test_word_problem_episode_with_the_calculator(qwen: Renderer) -> None:
    problem = tool_use.word_problems()[0]
    env = tool_use.make_env(qwen, problem)
    first, _ = run(env.initial_observation())
    prompt = qwen.tokenizer.decode(first.to_tokens())
    assert '"name": "calculator"' in prompt  # the tools are declared in the family's format
    assert prompt.startswith("<|im_start|>system\n" + tool_use.SYSTEM_PROMPT)
    step = run(env.step(action(qwen, "Let me compute.", [call("calculator", expression="(48+37)*3")])))
    assert (step.reward, step.done, step.metrics["tool_calls"], step.metrics["tool_errors"]) == (0.0, False, 1.0, 0.0)
    assert "<tool_response>\n255\n</tool_response>" in decoded(qwen, step)
    previous = [*first.to_tokens().tolist()]
    assert step.next_observation.to_tokens().tolist()[: len(previous)] == previous  # extends: one datum
    final = run(env.step(action(qwen, "The bakery takes in 255 dollars.\nAnswer: 255")))
    assert (final.reward, final.done) == (1.0, True)
    assert final.metrics["correct"] == 1.0
    assert final.metrics["tool_results"] == 1.0


def test_bad_calls_are_observations_and_the_episode_goes_on(qwen: Renderer) -> None:
    env = tool_use.make_env(qwen, tool_use.WordProblem("What is 2 + 2?", "4"))
    run(env.initial_observation())
    step = run(
        env.step(
            action(
                qwen,
                "",
                [
                    call("calculater", expression="2+2"),
                    call("calculator", expresion="2+2"),
                    call("calculator", expression="2/0"),
                ],
            )
        )
    )
    assert (step.done, step.reward, step.parse_error) == (False, 0.0, False)
    assert step.metrics["tool_errors"] == 3.0
    assert step.metrics["tool_error/unknown_tool"] == 1.0
    assert step.metrics["tool_error/invalid_arguments"] == 1.0
    assert step.metrics["tool_error/execution_failed"] == 1.0
    tool_messages = [message for message in env.messages if message.role == "tool"]
    assert [json.loads(message.text())["error"] for message in tool_messages] == [
        "unknown_tool",
        "invalid_arguments",
        "execution_failed",
    ]
    assert "did you mean 'calculator'" in tool_messages[0].text()
    assert "did you mean 'expression'" in tool_messages[1].text()
    assert [message.tool_call_id for message in tool_messages] == ["call_1_0", "call_1_1", "call_1_2"]
    final = run(env.step(action(qwen, "Answer: 5")))
    assert (final.done, final.reward, final.metrics["correct"]) == (True, 0.0, 0.0)


@pytest.mark.parametrize("why", ["Invalid JSON", "cut off"])
def test_unparseable_or_cut_off_responses_are_parse_errors(qwen: Renderer, why: str) -> None:
    env = tool_use.make_env(qwen, tool_use.WordProblem("What is 2 + 2?", "4"))
    run(env.initial_observation())
    if why == "cut off":
        sampled = action(qwen, "I will stop here", stop=False)
    else:
        sampled = action(qwen, "", [call("calculator", expression="2+2"), '{"name": "calculator", "arguments": {x}'])
    step = run(env.step(sampled))
    assert (step.done, step.reward, step.parse_error) == (True, -0.1, True)
    assert why in step.logs["parse_error"]


def test_the_turn_cap_grades_the_episode(qwen: Renderer) -> None:
    env = tool_use.make_env(qwen, tool_use.WordProblem("What is 2 + 2?", "4"), tool_use.WordProblemOptions(max_turns=2))
    run(env.initial_observation())
    first = run(env.step(action(qwen, "", [call("calculator", expression="2+2")])))
    assert not first.done
    second = run(env.step(action(qwen, "Answer: 4", [call("calculator", expression="2+2")])))
    assert (second.done, second.reward, second.metrics["max_turns"]) == (True, 1.0, 1.0)
    assert [message.role for message in env.messages][-2:] == ["assistant", "tool"]  # graded with the result


def test_per_call_timeout_through_the_timed_executor(qwen: Renderer) -> None:
    async def wait(seconds: float) -> str:
        """Wait a while."""
        await asyncio.sleep(seconds)
        return "waited"

    tools = ToolRegistry.of(Tool.from_function(wait, timeout_s=0.2))
    env = ToolUseEnv(
        qwen, [Message(role="user", content="wait")], tools, lambda m: (0.0, {}), executor=TimedToolExecutor()
    )
    run(env.initial_observation())
    step = run(env.step(action(qwen, "", [call("wait", seconds=60)])))
    assert step.metrics["tool_error/timeout"] == 1.0
    assert not step.done


def test_renderers_without_tools_and_bad_options_are_config_errors() -> None:
    llama = get_renderer("llama3", offline_tokenizer("llama3"))
    with pytest.raises(ConfigError, match="tool"):
        tool_use.make_env(llama, tool_use.word_problems()[0])
    with pytest.raises(ConfigError, match="max_turns"):
        tool_use.WordProblemOptions(max_turns=0)
    with pytest.raises(ConfigError, match="runner"):
        code.dataset(get_renderer("qwen3", offline_tokenizer("qwen3")), batch_size=1, group_size=2, n_batches=1)


def test_grader_results_are_checked(qwen: Renderer) -> None:
    env = ToolUseEnv(
        qwen, [Message(role="user", content="hi")], ToolRegistry.of(CALCULATOR), lambda m: (float("nan"), {})
    )
    run(env.initial_observation())
    with pytest.raises(ValidationError, match="finite"):
        run(env.step(action(qwen, "bye")))


def test_word_problem_set() -> None:
    problems = tool_use.word_problems()
    assert len(problems) == 60
    assert len({problem.question for problem in problems}) == 60
    assert (len(tool_use.word_problems("train")), len(tool_use.word_problems("test"))) == (48, 12)
    assert all(Fraction(problem.answer) == evaluate(problem.answer) for problem in problems)
    assert tool_use.parse_final_answer("so...\nAnswer: $1,234.50") == Fraction("1234.5")
    assert tool_use.parse_final_answer("no answer") is None


def test_datasets_are_deterministic(qwen: Renderer) -> None:
    first = tool_use.dataset(qwen, batch_size=3, group_size=2, n_batches=2, seed=5)
    second = tool_use.dataset(qwen, batch_size=3, group_size=2, n_batches=2, seed=5)
    envs = [run(builder.make_envs()) for builder in first.get_batch(1)]
    again = [run(builder.make_envs()) for builder in second.get_batch(1)]
    assert [[env.messages for env in group] for group in envs] == [[env.messages for env in group] for group in again]
    assert all(len(group) == 2 for group in envs)
    assert [builder.tags() for builder in first.get_batch(0)] == [("word_problems",)] * 3


class FakeRunner:
    def __init__(self) -> None:
        self.programs: list[str] = []

    async def run(self, program: str) -> SandboxResult:
        self.programs.append(program)
        return SandboxResult("ok" if "return" in program else "error", 0)


def test_code_episode_grades_the_last_block(qwen: Renderer) -> None:
    runner = FakeRunner()
    task = code.code_tasks()[0]
    env = code.make_env(qwen, task, code.CodeOptions(runner=runner))
    run(env.initial_observation())
    step = run(env.step(action(qwen, "", [call("run_python", code="print(1)")])))
    assert "status: error" in env.messages[-1].text()
    final = run(
        env.step(action(qwen, "Draft:\n```python\nx = 1\n```\nFinal:\n```python\ndef digit_sum(n):\n    return 0\n```"))
    )
    assert (step.done, final.done, final.reward, final.metrics["correct"]) == (False, True, 1.0, 1.0)
    assert runner.programs[-1] == "def digit_sum(n):\n    return 0\n\n\n" + task.tests
    plain = code.make_env(qwen, task, code.CodeOptions(runner=runner, use_tool=False))
    run(plain.initial_observation())
    unformatted = run(plain.step(action(qwen, "def digit_sum(n): return 0")))
    assert (unformatted.reward, unformatted.metrics["format"]) == (-0.1, 0.0)
    assert not plain.tools


def test_every_code_task_passes_its_reference_and_fails_a_stub() -> None:
    sandbox = PythonSandbox()
    tasks = code.code_tasks()
    assert len(tasks) == 30
    assert (len(code.code_tasks("train")), len(code.code_tasks("test"))) == (24, 6)

    async def check_all() -> list[tuple[str, str, str]]:
        limit = asyncio.Semaphore(2)

        async def check(task: code.CodeTask) -> tuple[str, str, str]:
            async with limit:
                good = await sandbox.run(task.solution + "\n\n" + task.tests)
                stub = await sandbox.run(f"def {task.entry_point}(*args, **kwargs):\n    return None\n\n{task.tests}")
            return task.entry_point, good.status, stub.status

        return list(await asyncio.gather(*(check(task) for task in tasks)))

    results = run(check_all())
    assert [(name, good) for name, good, _ in results if good != "ok"] == []
    assert [(name, stub) for name, _, stub in results if stub != "error"] == []


def test_code_episode_in_the_real_sandbox(qwen: Renderer) -> None:
    task = code.code_tasks()[1]
    env = code.make_env(qwen, task, code.CodeOptions(runner=PythonSandbox()))
    run(env.initial_observation())
    final = run(env.step(action(qwen, f"```python\n{task.solution}```")))
    assert (final.reward, final.metrics["sandbox_ok"]) == (1.0, 1.0)


# -- the text tool format and the one-step problem set (for renderers without a tool format) --------------------


@pytest.fixture(scope="module")
def chatml() -> Renderer:
    """ChatML (the format of the embedded SmolLM2) on the Qwen3 vocabulary: no tool format."""
    return get_renderer("chatml", offline_tokenizer("qwen3"))


def text_action(renderer: Renderer, text: str, *, stop: bool = True) -> SampledSequence:
    tokens = [*renderer.tokenizer.encode(text), *(renderer.stop_sequences().tokens[:1] if stop else ())]
    return SampledSequence(
        tokens_T=tokens, stop_reason="stop" if stop else "length", logprobs_T=np.full(len(tokens), -0.5)
    )


def test_one_step_problem_set() -> None:
    from tinkerflow.rl.envs.sets.one_step_problems import ONE_STEP_PROBLEMS

    problems = tool_use.word_problems("all", "one_step")
    assert len(problems) == len(ONE_STEP_PROBLEMS) == 60
    assert len({problem.question for problem in problems}) == 60
    train, test = tool_use.word_problems("train", "one_step"), tool_use.word_problems("test", "one_step")
    assert (len(train), len(test)) == (48, 12)
    assert not {p.question for p in train} & {p.question for p in test}
    for question, expression, answer in ONE_STEP_PROBLEMS:  # one calculator call solves each, exactly
        assert evaluate(expression) == Fraction(answer), question
        assert sum(expression.count(op) for op in "+-*/") == 1
    examples = {question for question, _, _ in tool_use.TEXT_EXAMPLES}
    assert not examples & {p.question for p in tool_use.word_problems("all", "one_step")}
    assert all(evaluate(expression) == Fraction(answer) for _, expression, answer in tool_use.TEXT_EXAMPLES)
    with pytest.raises(ConfigError, match="problem_set"):
        tool_use.word_problems("all", "hard")  # type: ignore[arg-type]  # the bad value under test


@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["calculator", "Calculator", " CALCULATOR ", "Answer", "calc", "note"]),
            st.sampled_from([":", " : ", " "]),
            st.sampled_from(["2+3", " 14 * 23 ", "", "x"]),
        ),
        max_size=5,
    )
)
@settings(max_examples=60, deadline=None)
def test_text_tool_calls_are_lines_naming_a_tool(lines: list[tuple[str, str, str]]) -> None:
    text = "\n".join(f"{name}{colon}{rest}" for name, colon, rest in lines)
    calls = tool_use.text_tool_calls(text, ToolRegistry.of(CALCULATOR))
    expected = [
        rest.strip()
        for name, colon, rest in lines
        if name.strip().lower() == "calculator" and ":" in colon and rest.strip()
    ]
    assert [call.name for call in calls] == ["calculator"] * len(expected)
    assert [call.arguments_dict() for call in calls] == [{"expression": value} for value in expected]


def test_text_format_episode_on_a_renderer_without_tools(chatml: Renderer) -> None:
    problem = tool_use.word_problems("train", "one_step")[0]  # 356 + 478
    with pytest.raises(ConfigError, match="tool format"):
        tool_use.make_env(chatml, problem)  # the native format needs the renderer's tool support
    options = tool_use.WordProblemOptions(tool_format="text", fewshot=2)
    env = tool_use.make_env(chatml, problem, options)
    first, _ = run(env.initial_observation())
    prompt = chatml.tokenizer.decode(first.to_tokens())
    assert prompt.startswith("<|im_start|>system\n" + tool_use.TEXT_SYSTEM_PROMPT)
    assert "calculator: 14 * 23<|im_end|>" in prompt
    assert "calculator: 322<|im_end|>" in prompt
    assert "96 * 15" not in prompt
    assert prompt.count("<|im_start|>user") == 5
    step = run(env.step(text_action(chatml, "calculator: 356 + 478")))
    assert (step.reward, step.done, step.metrics["tool_calls"], step.metrics["tool_errors"]) == (0.0, False, 1.0, 0.0)
    observation = step.next_observation.to_tokens().tolist()
    assert chatml.tokenizer.decode(observation).endswith(
        "<|im_start|>user\ncalculator: 834<|im_end|>\n<|im_start|>assistant\n"
    )
    assert observation[: first.length] == first.to_tokens().tolist()  # extends: one datum
    final = run(env.step(text_action(chatml, "Answer: 834")))
    assert (final.reward, final.done, final.metrics["correct"], final.metrics["used_tool"]) == (1.0, True, 1.0, 1.0)


def test_text_format_errors_turn_cap_and_no_call(chatml: Renderer) -> None:
    problem = tool_use.word_problems("test", "one_step")[0]
    options = tool_use.WordProblemOptions(tool_format="text", max_turns=2)
    env = tool_use.make_env(chatml, problem, options)
    run(env.initial_observation())
    step = run(env.step(text_action(chatml, "Let me see.\ncalculator: 487 +\ncalculator: 487 + 658")))
    assert (step.metrics["tool_calls"], step.metrics["tool_errors"], step.done) == (2.0, 1.0, False)
    reply = env.messages[-1]
    assert reply.role == "user"
    assert reply.text().startswith('calculator: {"error": "execution_failed"')
    assert reply.text().endswith("\ncalculator: 1145")
    capped = run(env.step(text_action(chatml, "calculator: 1145")))  # the cap grades the episode
    assert (capped.done, capped.metrics["max_turns"], capped.metrics["used_tool"], capped.reward) == (
        True, 1.0, 1.0, -0.1,
    )  # fmt: skip
    direct = tool_use.make_env(chatml, problem, options)
    run(direct.initial_observation())
    answered = run(direct.step(text_action(chatml, "Answer: 1145")))  # right without the tool: still correct
    assert (answered.reward, answered.metrics["used_tool"]) == (1.0, 0.0)
    cut = tool_use.make_env(chatml, problem, options)
    run(cut.initial_observation())
    assert run(cut.step(text_action(chatml, "calculator: 4", stop=False))).parse_error


def test_text_format_options_are_checked(chatml: Renderer) -> None:
    def pair(a: int, b: int) -> int:
        """Add.

        Args:
            a: one.
            b: two.
        """
        return a + b

    with pytest.raises(ConfigError, match=r"tools\.pair"):
        ToolUseEnv(chatml, [], ToolRegistry.of(pair), lambda messages: (0.0, {}), tool_format="text")
    with pytest.raises(ConfigError, match="tool_format"):
        ToolUseEnv(chatml, [], ToolRegistry.of(CALCULATOR), lambda m: (0.0, {}), tool_format="json")  # type: ignore[arg-type]  # the bad value under test
    for bad in ({"fewshot": 1}, {"fewshot": 4, "tool_format": "text"}, {"fewshot": True, "tool_format": "text"}):
        with pytest.raises(ConfigError, match="fewshot"):
            tool_use.WordProblemOptions(**bad)  # type: ignore[arg-type]  # the bad values under test


def test_text_format_dataset_draws_the_split(chatml: Renderer) -> None:
    test = tool_use.dataset(
        chatml, batch_size=6, group_size=2, n_batches=1, split="test", problem_set="one_step", tool_format="text",
        fewshot=1,
    )  # fmt: skip
    held_out = {problem.question for problem in tool_use.word_problems("test", "one_step")}
    for builder in test.get_batch(0):
        envs = run(builder.make_envs())
        assert len(envs) == 2
        assert envs[0].messages[-1].text() in held_out
        assert envs[0].messages[0].text() == tool_use.TEXT_SYSTEM_PROMPT


def test_text_calls_cut_at_the_equals_sign_and_cut_off_turns_can_go_on(chatml: Renderer) -> None:
    registry = ToolRegistry.of(CALCULATOR)
    calls = tool_use.text_tool_calls("calculator: 3 * 4 = 12\ncalculator: = 5", registry, "=")
    assert [call.arguments_dict() for call in calls] == [{"expression": "3 * 4"}]  # nothing before '=': no call
    problem = tool_use.word_problems("train", "one_step")[0]  # 356 + 478
    options = tool_use.WordProblemOptions(tool_format="text", end_on_parse_error=False)
    env = tool_use.make_env(chatml, problem, options)
    run(env.initial_observation())
    cut = run(env.step(text_action(chatml, "calculator: 356 + 478 = 800\ncalculator: 1 + 2", stop=False)))
    assert (cut.reward, cut.done, cut.parse_error, cut.metrics["tool_calls"]) == (-0.1, False, True, 1.0)
    assert env.messages[-1].text() == "calculator: 834"  # the complete line ran, the cut last line did not
    final = run(env.step(text_action(chatml, "Answer: 834")))
    assert (final.reward, final.done, final.metrics["used_tool"]) == (1.0, True, 1.0)
    again = tool_use.make_env(chatml, problem, options)
    run(again.initial_observation())
    equation = run(again.step(text_action(chatml, "So:\ncalculator: 356 + 478 = 81", stop=False)))
    assert (equation.metrics["tool_calls"], again.messages[-1].text()) == (1.0, "calculator: 834")  # ended by '='
    ended = tool_use.make_env(chatml, problem, tool_use.WordProblemOptions(tool_format="text"))
    run(ended.initial_observation())
    assert run(ended.step(text_action(chatml, "calculator: 356 + 478\nmore", stop=False))).done  # the default
    with pytest.raises(ValidationError, match="end_on_parse_error"):
        tool_use.WordProblemOptions(end_on_parse_error=0)  # type: ignore[arg-type]  # the bad value under test
