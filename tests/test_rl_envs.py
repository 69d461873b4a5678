"""RL environments: MessageEnv, ProblemEnv, the example envs (arithmetic, guess_number, math_boxed), datasets."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import types
from collections.abc import Coroutine, Sequence
from fractions import Fraction
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.fakes import RecordingSampler

from tinkerflow.chat import Conversation, Message, ToolSpec
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, Termination, build_generation_prompt, get_renderer
from tinkerflow.rl.envs import (
    GeneratedRLDataset,
    ListRLDataset,
    MessageEnv,
    MessageStep,
    ProblemEnv,
    ProblemGroupBuilder,
    arithmetic,
    epoch_order,
    guess_number,
    math_boxed,
    stop_condition_for,
)
from tinkerflow.rl.types import StepResult, StopCondition
from tinkerflow.sampling import SampledSequence
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.completers import Completion, MessageCompleter, SamplerTokenCompleter
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.tokenizers import Tokenizer

T = TypeVar("T")


def run(coroutine: Coroutine[object, object, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def smol() -> Renderer:
    return get_renderer("smollm2", offline_tokenizer("smollm2"))


@pytest.fixture(scope="module")
def qwen() -> Renderer:
    return get_renderer("qwen3", offline_tokenizer("qwen3"))


def _tool_call(tokenizer: Tokenizer, body: str) -> list[int]:
    """A Qwen3 tool-call block around ``body``, as the model samples it."""
    return [tokenizer.token_id("<tool_call>"), *tokenizer.encode(f"\n{body}\n"), tokenizer.token_id("</tool_call>")]


def reply(renderer: Renderer, text: str, *, stop: bool = True) -> SampledSequence:
    """The tokens a model would sample for ``text`` (plus the stop token), with made-up logprobs."""
    tokens = list(renderer.tokenizer.encode(text))
    if stop:
        tokens.append(renderer.stop_sequences().tokens[0])
    return SampledSequence(
        tokens_T=tokens, stop_reason="stop" if stop else "length", logprobs_T=np.full(len(tokens), -0.5)
    )


def tokens_of(model_input: ModelInput) -> list[int]:
    return [int(token) for token in model_input.to_tokens()]


# -- ProblemEnv ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stop", "reward", "format_ok", "correct"),
    [
        ("good 7", True, 1.0, 1.0, 1.0),  # correct, well formatted
        ("good 3", True, 0.0, 1.0, 0.0),  # wrong, well formatted
        ("bad 7", True, 0.7, 0.0, 1.0),  # correct, format check fails
        ("bad 3", True, -0.3, 0.0, 0.0),
        ("good 7", False, 0.7, 0.0, 1.0),  # cut off: not well formed, still graded (the cookbook's rule)
    ],
)
def test_problem_env_reward_is_correct_plus_format_term(
    smol: Renderer, text: str, stop: bool, reward: float, format_ok: float, correct: float
) -> None:
    env = ProblemEnv(
        smol,
        "Say good 7.",
        lambda answer: answer.endswith("7"),
        format_check=lambda answer: answer.startswith("good"),
        format_coef=0.3,
        max_tokens=12,
    )
    observation, stop_condition = run(env.initial_observation())
    assert tokens_of(observation) == tokens_of(
        build_generation_prompt(smol, [Message(role="user", content="Say good 7.")])
    )
    assert stop_condition == stop_condition_for(smol, 12)
    result = run(env.step(reply(smol, text, stop=stop)))
    assert result.done
    assert result.reward == pytest.approx(reward)
    assert result.metrics == {"format": format_ok, "correct": correct}
    assert result.parse_error is (not stop)
    with pytest.raises(ValidationError, match="single use"):
        run(env.step(reply(smol, text)))


def test_problem_group_builder_makes_fresh_envs_and_zero_group_rewards(smol: Renderer) -> None:
    builder = arithmetic.builder(smol, arithmetic.ArithmeticProblem(2, "+", 3), 4)
    envs = run(builder.make_envs())
    again = run(builder.make_envs())
    assert len(envs) == 4
    assert len({id(env) for env in [*envs, *again]}) == 8
    assert builder.tags() == ("arithmetic",)
    assert run(builder.compute_group_rewards([])) == []
    with pytest.raises(ConfigError):
        ProblemGroupBuilder(lambda: envs[0], 0)


# -- arithmetic ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Answer: 12", 12),
        ("Answer:7.", 7),
        ("I think 3. Answer: 5", 5),
        ("Answer: 4\nAnswer: 6", 6),
        ("12", 12),
        (" -3 ", -3),
        ("It is 12 or 13", None),
        ("Answer: x", None),
        ("", None),
    ],
)
def test_arithmetic_parse_answer(text: str, answer: int | None) -> None:
    assert arithmetic.parse_answer(text) == answer


def test_arithmetic_format() -> None:
    assert arithmetic.is_well_formatted("Answer: 12")
    assert arithmetic.is_well_formatted(" Answer: -3. ")
    assert not arithmetic.is_well_formatted("12")
    assert not arithmetic.is_well_formatted("Answer: 12, I think")


@given(st.integers(0, 2**32 - 1), st.integers(0, 50), st.sampled_from([("+",), ("-",), ("+", "-")]))
def test_arithmetic_problems_stay_in_range(seed: int, max_operand: int, ops: tuple[arithmetic.Operator, ...]) -> None:
    problem = arithmetic.sample_problem(np.random.default_rng(seed), max_operand, ops)
    assert 0 <= problem.a <= max_operand
    assert 0 <= problem.b <= max_operand
    assert problem.op in ops
    assert problem.answer >= 0
    assert problem.answer == eval(problem.expression)


def test_arithmetic_prompt_design() -> None:
    problem = arithmetic.ArithmeticProblem(8, "-", 3)
    messages = arithmetic.arithmetic_messages(problem)
    assert [message.role for message in messages] == ["user", "assistant"] * 4 + ["user"]
    assert messages[-1].content == "What is 8 - 3? Reply with 'Answer: N'."
    for message in messages[1:-1:2]:  # the worked examples answer in the graded format, correctly
        assert arithmetic.is_well_formatted(message.text())
    for question, answer in zip(messages[0:-1:2], messages[1:-1:2], strict=True):
        expression = question.text().removeprefix("What is ").split("?")[0]
        assert arithmetic.parse_answer(answer.text()) == eval(expression)
    assert arithmetic.arithmetic_messages(problem, fewshot=False) == messages[-1:]
    assert arithmetic.arithmetic_messages(problem, fewshot=0) == messages[-1:]
    assert arithmetic.arithmetic_messages(problem, fewshot=1) == (*messages[:2], messages[-1])
    with pytest.raises(ConfigError, match="fewshot"):
        arithmetic.arithmetic_messages(problem, fewshot=5)


@pytest.mark.parametrize(
    ("text", "stop", "reward"),
    [
        ("Answer: 5", True, 1.0),
        ("5", True, 0.9),
        ("Answer: 6", True, 0.0),
        ("Answer: 5", False, 0.9),
        ("no", True, -0.1),
    ],
)
def test_arithmetic_env_rewards(smol: Renderer, text: str, stop: bool, reward: float) -> None:
    env = arithmetic.make_env(smol, arithmetic.ArithmeticProblem(8, "-", 3))
    observation, stop_condition = run(env.initial_observation())
    prompt = build_generation_prompt(smol, arithmetic.arithmetic_messages(arithmetic.ArithmeticProblem(8, "-", 3)))
    assert tokens_of(observation) == tokens_of(prompt)
    assert stop_condition.max_tokens == 16
    assert run(env.step(reply(smol, text, stop=stop))).reward == pytest.approx(reward)


def test_arithmetic_dataset_is_a_pure_function_of_the_index(smol: Renderer) -> None:
    data = arithmetic.dataset(smol, batch_size=4, group_size=3, n_batches=10, seed=7)
    assert len(data) == 10

    def questions(index: int) -> list[str]:
        builders = data.get_batch(index)
        return [run(builder.make_envs())[0].question for builder in builders]  # type: ignore[attr-defined]

    first = [questions(index) for index in range(10)]
    assert [questions(index) for index in reversed(range(10))] == first[::-1]
    assert len({tuple(batch) for batch in first}) > 1
    other = arithmetic.dataset(smol, batch_size=4, group_size=3, n_batches=10, seed=8)
    assert [run(b.make_envs())[0].question for b in other.get_batch(0)] != first[0]  # type: ignore[attr-defined]
    assert all(len(run(builder.make_envs())) == 3 for builder in data.get_batch(0))
    with pytest.raises(ValidationError, match="outside"):
        data.get_batch(10)
    with pytest.raises(ConfigError):
        arithmetic.dataset(smol, batch_size=4, group_size=3, n_batches=10, ops=("*",))  # type: ignore[arg-type]


# -- MessageEnv -----------------------------------------------------------------------------------------------------


class EchoEnv(MessageEnv):
    """Replies "again" until the assistant says "stop"; records what respond() saw."""

    def __init__(self, renderer: Renderer, **options: object) -> None:
        super().__init__(renderer, [Message(role="user", content="talk")], **options)  # type: ignore[arg-type]
        self.seen: list[tuple[Message, Termination]] = []

    async def respond(self, message: Message, termination: Termination) -> MessageStep:
        self.seen.append((message, termination))
        if message.text() == "stop":
            return MessageStep(reward=1.0, done=True)
        return MessageStep(reward=0.25, done=False, messages=[Message(role="user", content="again")], max_tokens=5)


def test_message_env_conversation_grows_and_observations_extend(smol: Renderer) -> None:
    env = EchoEnv(smol, max_tokens=9)
    observation, stop = run(env.initial_observation())
    assert stop == stop_condition_for(smol, 9)
    action = reply(smol, "hello")
    result = run(env.step(action))
    assert (result.reward, result.done, result.parse_error, result.mask_turn) == (0.25, False, False, False)
    assert result.next_stop.max_tokens == 5
    assert [m.text() for m in env.messages] == ["talk", "hello", "again"]
    assert tokens_of(result.next_observation) == tokens_of(build_generation_prompt(smol, env.messages))
    prefix = tokens_of(observation) + [int(t) for t in action.tokens_T]
    assert tokens_of(result.next_observation)[: len(prefix)] == prefix
    final = run(env.step(reply(smol, "stop")))
    assert final.done
    assert final.reward == 1.0
    assert final.next_observation.length == 0
    assert [termination for _, termination in env.seen] == [Termination.STOP_SEQUENCE] * 2
    with pytest.raises(ValidationError, match="single use"):
        run(env.step(reply(smol, "stop")))


def test_message_env_cut_off_response_ends_the_episode_with_the_penalty(smol: Renderer) -> None:
    env = EchoEnv(smol, parse_error_reward=-0.5, mask_parse_errors=True)
    run(env.initial_observation())
    result = run(env.step(reply(smol, "hel", stop=False)))
    assert (result.reward, result.done, result.parse_error, result.mask_turn) == (-0.5, True, True, True)
    assert result.metrics["parse_error"] == 1.0
    assert env.seen == []  # respond() is not called


def test_message_env_can_continue_after_a_parse_error(smol: Renderer) -> None:
    env = EchoEnv(smol, parse_error_reward=-0.5, end_on_parse_error=False)
    run(env.initial_observation())
    result = run(env.step(reply(smol, "hel", stop=False)))
    assert (result.reward, result.done, result.parse_error, result.mask_turn) == (-0.25, False, True, False)
    assert env.seen[0][1] is Termination.MALFORMED
    two_stops = reply(smol, "a").tokens_T.tolist() + reply(smol, "b").tokens_T.tolist()
    result = run(env.step(SampledSequence(two_stops, "stop", np.zeros(len(two_stops)))))
    assert result.parse_error
    assert env.seen[1][1] is Termination.MALFORMED


def test_message_env_ends_before_the_context_overflows(smol: Renderer) -> None:
    env = EchoEnv(smol, max_observation_tokens=60)
    observation, _ = run(env.initial_observation())
    assert observation.length < 60
    result = run(env.step(reply(smol, "x " * 40)))
    assert result.done
    assert result.metrics["context_overflow"] == 1.0
    assert result.reward == 0.25


def test_message_env_unparsed_tool_call_is_a_parse_error(qwen: Renderer) -> None:
    tok = qwen.tokenizer
    tokens = [*tok.encode("calling"), *_tool_call(tok, "{not json}"), tok.token_id("<|im_end|>")]
    env = EchoEnv(qwen)
    run(env.initial_observation())
    result = run(env.step(SampledSequence(tokens, "stop", np.zeros(len(tokens)))))
    assert result.parse_error
    assert result.done
    assert result.reward == -1.0
    assert "parse_error" in result.logs


# -- guess_number -------------------------------------------------------------------------------------------------


def play(renderer: Renderer, env: MessageEnv, guesses: Sequence[str]) -> list[tuple[ModelInput, StepResult]]:
    observation, _ = run(env.initial_observation())
    history = []
    for guess in guesses:
        action = reply(renderer, guess)
        result = run(env.step(action))
        history.append((observation, result))
        prefix = tokens_of(observation) + action.tokens_T.tolist()
        if not result.done:  # each observation extends the previous observation and action
            assert tokens_of(result.next_observation)[: len(prefix)] == prefix
        observation = result.next_observation
    return history


def test_guess_number_multi_turn(smol: Renderer) -> None:
    env = guess_number.GuessNumberEnv(smol, 7, low=1, high=10, max_turns=5)
    history = play(smol, env, ["3", "My guess is 9", "seven", "7"])
    assert [m.text() for m in env.messages if m.role == "user"][1:] == [
        "Higher.",
        "Lower.",
        "Please reply with a single integer between 1 and 10.",
    ]
    assert [result.reward for _, result in history] == [0.0, 0.0, 0.0, 1.0]
    assert [result.done for _, result in history] == [False, False, False, True]
    assert history[2][1].metrics["invalid_guess"] == 1.0
    assert history[-1][1].metrics["found"] == 1.0
    assert history[-1][1].metrics["guesses"] == 4.0


def test_guess_number_runs_out_of_turns(smol: Renderer) -> None:
    env = guess_number.GuessNumberEnv(smol, 2, low=1, high=4, max_turns=2)
    history = play(smol, env, ["3", "4"])
    assert history[-1][1].done
    assert history[-1][1].reward == 0.0
    assert history[-1][1].metrics["found"] == 0.0


def test_guess_number_trajectory_assembles_into_one_datum(smol: Renderer) -> None:
    assembly = pytest.importorskip("tinkerflow.rl.assembly")
    from tinkerflow.shell.rollouts import run_episode

    script = iter(["8", "4", "5"])

    async def completer(observation: ModelInput, stop: StopCondition) -> SampledSequence:
        return reply(smol, next(script))

    env = guess_number.GuessNumberEnv(smol, 5, low=1, high=10)
    trajectory = run(run_episode(env, completer))
    assert [t.reward for t in trajectory.transitions] == [0.0, 0.0, 1.0]
    datums = assembly.trajectory_datums(trajectory, 1.0)
    assert len(datums) == 1  # sequence extension held on every turn
    assert int(datums[0].mask_T.sum()) == sum(t.action_tokens_T.size for t in trajectory.transitions)


def test_guess_number_dataset(smol: Renderer) -> None:
    data = guess_number.dataset(smol, batch_size=3, group_size=2, n_batches=4, seed=1, high=8)
    secrets = [[run(b.make_envs())[0].secret for b in data.get_batch(i)] for i in range(4)]  # type: ignore[attr-defined]
    assert all(1 <= s <= 8 for batch in secrets for s in batch)
    assert secrets == [[run(b.make_envs())[0].secret for b in data.get_batch(i)] for i in range(4)]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        guess_number.dataset(smol, batch_size=3, group_size=2, n_batches=4, max_turns=0)


# -- math_boxed ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\boxed{3}}", "\\boxed{3}"),
        ("the answer is \\boxed 7", "7"),
        ("} stray \\boxed{5}", "5"),
        ("no box", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_boxed(text: str, boxed: str | None) -> None:
    assert math_boxed.extract_boxed(text) == boxed


MATCHES = [
    ("42", "42"),
    ("42.0", "42"),
    ("1,000", "1000"),
    ("\\frac{1}{2}", "\\frac12"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("3/4", "\\frac{3}{4}"),
    ("0.5", "\\frac{1}{2}"),
    ("x = 5", "5"),
    ("$5$", "5"),
    ("90^\\circ", "90"),
    ("12\\%", "12"),
    ("\\text{5}", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("-\\frac{1}{3}", "-1/3"),
    ("\\text{Yes}", "yes"),
]
MISMATCHES = [("5", "6"), ("0.33", "\\frac{1}{3}"), ("(1,2)", "(2,1)"), ("", "0"), ("2\\sqrt{2}", "\\sqrt{8}")]


@pytest.mark.parametrize(("given", "reference"), MATCHES)
def test_answers_match(given: str, reference: str) -> None:
    assert math_boxed.answers_match(given, reference)
    assert math_boxed.answers_match(reference, given)


@pytest.mark.parametrize(("given", "reference"), MISMATCHES)
def test_answers_differ(given: str, reference: str) -> None:
    assert not math_boxed.answers_match(given, reference)
    assert not math_boxed.answers_match(None, reference)


def test_unreduced_fractions_match_their_value() -> None:  # a deliberate difference from the cookbook
    assert math_boxed.answers_match("2/4", "\\frac{1}{2}")
    assert math_boxed.numeric_value(math_boxed.normalize_answer("\\frac{-6}{8}")) == Fraction(-3, 4)


def _cookbook_grading() -> types.ModuleType:
    """The cookbook's math_grading, importable without pylatexenc (its LaTeX-to-text step then always fails,
    which the cookbook suppresses)."""
    if "pylatexenc" not in sys.modules:
        try:
            importlib.import_module("pylatexenc.latex2text")
        except ImportError:
            stub = types.ModuleType("pylatexenc")
            latex2text = types.ModuleType("pylatexenc.latex2text")

            class LatexNodes2Text:
                def latex_to_text(self, text: str) -> str:
                    raise ValueError("stub")

            latex2text.LatexNodes2Text = LatexNodes2Text  # type: ignore[attr-defined]
            stub.latex2text = latex2text  # type: ignore[attr-defined]
            sys.modules["pylatexenc"] = stub
            sys.modules["pylatexenc.latex2text"] = latex2text
    return importlib.import_module("tinker_cookbook.recipes.math_rl.math_grading")


@pytest.fixture(scope="module")
def cookbook_grading() -> types.ModuleType:
    pytest.importorskip("sympy")
    return _cookbook_grading()


def test_grading_agrees_with_the_cookbook(cookbook_grading: types.ModuleType) -> None:
    for answer, reference in MATCHES[:11]:
        assert cookbook_grading.grade_answer(answer, reference), (answer, reference)
    for answer, reference in MISMATCHES[:3]:
        assert not cookbook_grading.grade_answer(answer, reference), (answer, reference)


_balanced_text = st.recursive(
    st.text(alphabet="ab1 \\", max_size=4),
    lambda inner: st.one_of(
        st.builds(lambda a, b: a + b, inner, inner),
        st.builds(lambda a: "{" + a + "}", inner),
        st.builds(lambda a: "\\boxed{" + a + "}", inner),
        st.builds(lambda a: "\\boxed " + a, st.text(alphabet="ab1", min_size=1, max_size=3)),
    ),
    max_leaves=8,
)


@given(_balanced_text)
def test_extract_boxed_agrees_with_the_cookbook(text: str) -> None:
    cookbook = _cookbook_grading()
    try:
        expected: str | None = cookbook.extract_boxed(text)
    except ValueError:
        expected = None
    if len(set(re.findall(r"\\boxed\s+([a-zA-Z0-9]+)", text))) <= 1:  # the cookbook's bare fallback takes the first
        assert math_boxed.extract_boxed(text) == expected


def test_math_env_and_dataset(smol: Renderer) -> None:
    problem = math_boxed.MathProblem("What is 1 + 1?", "2")
    env = math_boxed.make_env(smol, problem)
    observation, _ = run(env.initial_observation())
    messages = (
        *math_boxed.fewshot_prefix(),
        Message(role="user", content="What is 1 + 1?" + math_boxed.BOXED_INSTRUCTION),
    )
    assert tokens_of(observation) == tokens_of(build_generation_prompt(smol, messages))
    assert run(env.step(reply(smol, "It is \\boxed{2}."))).reward == 1.0
    assert run(math_boxed.make_env(smol, problem).step(reply(smol, "It is 2."))).reward == pytest.approx(-0.1)
    assert run(math_boxed.make_env(smol, problem).step(reply(smol, "\\boxed{3}"))).reward == 0.0
    for known in math_boxed.MATH_PROBLEMS:
        assert math_boxed.answers_match(math_boxed.extract_boxed(f"\\boxed{{{known.answer}}}"), known.answer)
    data = math_boxed.dataset(smol, batch_size=3, group_size=2, seed=0, epochs=2)
    assert len(data) == 6
    seen = [run(b.make_envs())[0].question for i in range(3) for b in data.get_batch(i)]  # type: ignore[attr-defined]
    assert sorted(seen) == sorted(p.question + math_boxed.BOXED_INSTRUCTION for p in math_boxed.MATH_PROBLEMS)


def test_problems_from_rows() -> None:
    rows = [{"problem": "q1", "answer": "5"}, {"problem": "q2", "answer": "so \\boxed{\\frac{1}{2}}."}]
    assert math_boxed.problems_from_rows(rows) == (
        math_boxed.MathProblem("q1", "5"),
        math_boxed.MathProblem("q2", "\\frac{1}{2}"),
    )
    with pytest.raises(ValidationError, match=r"rows\[0\]"):
        math_boxed.problems_from_rows([{"question": "q"}])
    with pytest.raises(ValidationError, match=r"rows\[0\]\.answer"):
        math_boxed.problems_from_rows([{"problem": "q", "answer": "\\boxed{ }"}])


# -- datasets -----------------------------------------------------------------------------------------------------


@given(st.integers(1, 40), st.integers(1, 12), st.integers(1, 3), st.integers(0, 2**31))
def test_list_dataset_epochs_are_seeded_permutations(n: int, batch_size: int, epochs: int, seed: int) -> None:
    items = [ProblemGroupBuilder(lambda: None, 1, (str(i),)) for i in range(n)]  # type: ignore[arg-type, return-value]
    data = ListRLDataset(items, batch_size, seed, epochs=epochs)
    per_epoch = -(-n // batch_size)
    assert len(data) == epochs * per_epoch
    for epoch in range(epochs):
        batches = [data.get_batch(epoch * per_epoch + i) for i in range(per_epoch)]
        assert all(len(batch) == batch_size for batch in batches[:-1])
        order = [builder.tags()[0] for batch in batches for builder in batch]
        assert sorted(order, key=int) == [str(i) for i in range(n)]  # each builder exactly once per epoch
        assert order == [str(i) for i in epoch_order(n, seed, epoch)]
    again = ListRLDataset(items, batch_size, seed, epochs=epochs)
    assert [again.get_batch(i) for i in range(len(data))] == [data.get_batch(i) for i in range(len(data))]


def test_list_dataset_order_changes_between_epochs_and_seeds() -> None:
    assert not np.array_equal(epoch_order(50, 0, 0), epoch_order(50, 0, 1))
    assert not np.array_equal(epoch_order(50, 0, 0), epoch_order(50, 1, 0))
    assert epoch_order(5, 3, 2, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        ListRLDataset([], 2)
    with pytest.raises(ConfigError):
        GeneratedRLDataset(lambda rng: None, 0, 3)  # type: ignore[arg-type, return-value]


# -- MessageCompleter ---------------------------------------------------------------------------------------------


def test_message_completer_keeps_tool_calls_and_termination(qwen: Renderer) -> None:
    tok = qwen.tokenizer
    body = [
        *tok.encode("Let me look."),
        *_tool_call(tok, '{"name": "search", "arguments": {"query": "tinker"}}'),
        *_tool_call(tok, "{broken"),
    ]
    end = tok.token_id("<|im_end|>")
    conversation = Conversation(
        messages=(Message(role="user", content="find tinker"),),
        tools=(ToolSpec.create("search", "web search", {"type": "object", "properties": {}}),),
    )
    sampler = RecordingSampler([*body, end])
    completion = run(MessageCompleter.from_sampler(sampler, qwen, max_tokens=64)(conversation))
    assert isinstance(completion, Completion)
    assert completion.termination is Termination.STOP_SEQUENCE
    assert completion.is_clean
    assert [(call.name, call.arguments_dict()) for call in completion.message.tool_calls] == [
        ("search", {"query": "tinker"})
    ]
    assert len(completion.message.unparsed_tool_calls) == 1
    assert "Let me look." in completion.message.text()
    assert completion.tokens.tokens_T.tolist() == [*body, end]
    prompt, _, params = sampler.requests[0]
    assert prompt == build_generation_prompt(qwen, conversation)  # the tools are rendered
    assert params.stop_tokens == (end,)
    assert params.max_tokens == 64
    assert from_json(to_json(completion), Completion) == completion

    cut = run(MessageCompleter(SamplerTokenCompleter(RecordingSampler(body[:5])), qwen)(conversation))
    assert cut.termination is Termination.MALFORMED
    assert not cut.is_clean


def test_records_round_trip_through_serde() -> None:
    records: list[object] = [
        MessageStep(
            reward=0.5, done=False, messages=[Message(role="user", content="hi")], max_tokens=3, metrics={"a": 1}
        ),
        arithmetic.ArithmeticProblem(3, "-", 2),
        math_boxed.MathProblem("q", "\\frac{1}{2}"),
    ]
    for record in records:
        assert from_json(to_json(record), type(record)) == record
