"""Hostile Python records: every bad value given to a record's constructor is refused with one exact typed error
naming the record and the field (no raw ``TypeError`` from a converter, no silent acceptance).

The older cases of the strict-inputs work (boolean token ids, positive logprobs, lone surrogates) are in
``test_strict_inputs.py``; these cover the rest of the public records: sampling parameters, messages and
conversations, tool calls and specs, images, token chunks, datums, RL records, evaluation specs, optimizer
parameters, RL datasets and problems."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.hostile.support import raises_exactly

from tinkerflow import Datum, Message, ModelInput, SampledSequence, SamplingParams, TextPart, TokenChunk, ToolCall
from tinkerflow import ToolSpec as Spec
from tinkerflow.chat import Conversation, ImagePart
from tinkerflow.errors import ConfigError, DTypeError, NonFiniteError, ShapeError, ValidationError
from tinkerflow.evals import EvalSpec
from tinkerflow.rl.envs.datasets import GeneratedRLDataset, ListRLDataset
from tinkerflow.rl.envs.math_boxed import MathProblem, problems_from_rows
from tinkerflow.rl.types import RolloutFailure, StepResult, StopCondition, Trajectory, TrajectoryGroup, Transition
from tinkerflow.training import AdamParams

pytestmark = pytest.mark.hostile("records")

MI = ModelInput.from_tokens([1, 2, 3])
USER = Message(role="user", content="x")


# (id, thunk, exact error class, where, field)
Case = tuple[str, Callable[[], object], type[Exception], str, str]
SP, EV = "SamplingParams", "EvalSpec['a']"

CASES: list[Case] = [
    ("sampling max_tokens 0", lambda: SamplingParams(max_tokens=0), ConfigError, SP, "max_tokens"),
    ("sampling max_tokens -1", lambda: SamplingParams(max_tokens=-1), ConfigError, SP, "max_tokens"),
    ("sampling max_tokens true", lambda: SamplingParams(max_tokens=True), ValidationError, SP, "max_tokens"),
    ("sampling max_tokens 2.5", lambda: SamplingParams(max_tokens=2.5), ValidationError, SP, "max_tokens"),
    ("sampling temperature -1", lambda: SamplingParams(temperature=-1.0), ConfigError, SP, "temperature"),
    ("sampling temperature nan", lambda: SamplingParams(temperature=math.nan), NonFiniteError, SP, "temperature"),
    ("sampling temperature inf", lambda: SamplingParams(temperature=math.inf), NonFiniteError, SP, "temperature"),
    ("sampling temperature true", lambda: SamplingParams(temperature=True), ValidationError, SP, "temperature"),
    ("sampling temperature text", lambda: SamplingParams(temperature="1"), ValidationError, SP, "temperature"),
    ("sampling top_p 0", lambda: SamplingParams(top_p=0.0), ConfigError, SP, "top_p"),
    ("sampling top_p 1.5", lambda: SamplingParams(top_p=1.5), ConfigError, SP, "top_p"),
    ("sampling top_p nan", lambda: SamplingParams(top_p=math.nan), NonFiniteError, SP, "top_p"),
    ("sampling top_k 0", lambda: SamplingParams(top_k=0), ConfigError, SP, "top_k"),
    ("sampling top_k -2", lambda: SamplingParams(top_k=-2), ConfigError, SP, "top_k"),
    ("sampling top_k 2.5", lambda: SamplingParams(top_k=2.5), ValidationError, SP, "top_k"),
    ("sampling seed true", lambda: SamplingParams(seed=True), ValidationError, SP, "seed"),
    ("sampling seed 2.5", lambda: SamplingParams(seed=2.5), ValidationError, SP, "seed"),
    ("sampling stop string empty", lambda: SamplingParams(stop_strings=("",)), ConfigError, SP, "stop_strings[0]"),
    ("sampling stop string int", lambda: SamplingParams(stop_strings=(5,)), ValidationError, SP, "stop_strings[0]"),
    ("sampling stop token -1", lambda: SamplingParams(stop_tokens=(-1,)), ConfigError, SP, "stop_tokens[0]"),
    ("sampling stop token 1.5", lambda: SamplingParams(stop_tokens=(1.5,)), ValidationError, SP, "stop_tokens[0]"),
    ("sampling stop token text", lambda: SamplingParams(stop_tokens=("a",)), ValidationError, SP, "stop_tokens[0]"),
    ("message role bot", lambda: Message(role="bot"), ValidationError, "Message", "role"),
    ("message role int", lambda: Message(role=5), ValidationError, "Message", "role"),
    ("message content int", lambda: Message(role="user", content=5), ValidationError, "Message", "content"),
    ("message content None", lambda: Message(role="user", content=None), ValidationError, "Message", "content"),
    ("message part int", lambda: Message(role="user", content=[5]), ValidationError, "Message", "content[0]"),
    ("message trainable text", lambda: Message(role="user", trainable="yes"), ValidationError, "Message", "trainable"),
    (
        "message tool_call_id int",
        lambda: Message(role="tool", tool_call_id=5),
        ValidationError,
        "Message",
        "tool_call_id",
    ),
    ("message name int", lambda: Message(role="user", name=5), ValidationError, "Message", "name"),
    (
        "user tool calls",
        lambda: Message(role="user", tool_calls=[ToolCall(name="f")]),
        ValidationError,
        "Message",
        "tool_calls",
    ),
    (
        "tool call text",
        lambda: Message(role="assistant", tool_calls=["f"]),
        ValidationError,
        "Message",
        "tool_calls[0]",
    ),
    ("conversation empty", lambda: Conversation(messages=()), ValidationError, "Conversation", "messages"),
    ("conversation int", lambda: Conversation(messages=[5]), ValidationError, "Conversation", "messages[0]"),
    (
        "conversation dict",
        lambda: Conversation(messages=[{"role": "user"}]),
        ValidationError,
        "Conversation",
        "messages[0]",
    ),
    ("conversation text", lambda: Conversation(messages="hello"), ValidationError, "Conversation", "messages"),
    (
        "conversation tool int",
        lambda: Conversation(messages=[USER], tools=[5]),
        ValidationError,
        "Conversation",
        "tools[0]",
    ),
    ("tool call no name", lambda: ToolCall(name=""), ValidationError, "ToolCall", "name"),
    ("tool call args not json", lambda: ToolCall(name="f", arguments="{x"), ValidationError, "ToolCall", "arguments"),
    ("tool call args list", lambda: ToolCall(name="f", arguments="[1]"), ValidationError, "ToolCall", "arguments"),
    ("tool call args int", lambda: ToolCall(name="f", arguments=5), ValidationError, "ToolCall", "arguments"),
    ("tool spec no name", lambda: Spec(name=""), ValidationError, "ToolSpec", "name"),
    ("tool spec params not json", lambda: Spec(name="f", parameters="{"), ValidationError, "ToolSpec", "parameters"),
    ("tool spec params list", lambda: Spec(name="f", parameters="[1]"), ValidationError, "ToolSpec", "parameters"),
    ("image empty", lambda: ImagePart(data=b""), ValidationError, "ImagePart", "data"),
    ("image bmp", lambda: ImagePart(data=b"xx", format="bmp"), ValidationError, "ImagePart", "format"),
    ("image text", lambda: ImagePart(data="abc"), ValidationError, "ImagePart", "data"),
    ("text part int", lambda: TextPart(5), ValidationError, "TextPart", "text"),
    ("chunk negative", lambda: TokenChunk([-1]), ValidationError, "TokenChunk", "tokens_T"),
    ("chunk 2-D", lambda: TokenChunk([[1, 2]]), ShapeError, "TokenChunk", "tokens_T"),
    ("chunk fraction", lambda: TokenChunk([1.5]), DTypeError, "TokenChunk", "tokens_T"),
    ("chunk text", lambda: TokenChunk(["a"]), DTypeError, "TokenChunk", "tokens_T"),
    ("chunk beyond int64", lambda: TokenChunk([2**70]), DTypeError, "TokenChunk", "tokens_T"),
    ("chunk nan", lambda: TokenChunk([math.nan]), DTypeError, "TokenChunk", "tokens_T"),
    ("model input chunk int", lambda: ModelInput(chunks=[5]), ValidationError, "ModelInput", "chunks[0]"),
    ("model input from text", lambda: ModelInput.from_tokens("abc"), DTypeError, "TokenChunk", "tokens_T"),
    ("datum targets short", lambda: Datum(MI, [1, 2]), ShapeError, "Datum", "target_tokens_T"),
    ("datum targets negative", lambda: Datum(MI, [1, -2, 3]), ValidationError, "Datum", "target_tokens_T"),
    (
        "datum weights nan",
        lambda: Datum(MI, [1, 2, 3], weights_T=[1, math.nan, 1]),
        NonFiniteError,
        "Datum",
        "weights_T",
    ),
    (
        "datum weights inf",
        lambda: Datum(MI, [1, 2, 3], weights_T=[1, math.inf, 1]),
        NonFiniteError,
        "Datum",
        "weights_T",
    ),
    (
        "datum weights float64 max",
        lambda: Datum(MI, [1, 2, 3], weights_T=[1e300, 1, 1]),
        NonFiniteError,
        "Datum",
        "weights_T",
    ),
    ("datum weights short", lambda: Datum(MI, [1, 2, 3], weights_T=[1.0]), ShapeError, "Datum", "weights_T"),
    ("datum weights text", lambda: Datum(MI, [1, 2, 3], weights_T=["a", "b", "c"]), DTypeError, "Datum", "weights_T"),
    (
        "datum logprobs nan",
        lambda: Datum(MI, [1, 2, 3], logprobs_T=[-1, math.nan, -1]),
        NonFiniteError,
        "Datum",
        "logprobs_T",
    ),
    (
        "datum logprobs -inf",
        lambda: Datum(MI, [1, 2, 3], logprobs_T=[-1, -math.inf, -1]),
        NonFiniteError,
        "Datum",
        "logprobs_T",
    ),
    (
        "datum advantages nan",
        lambda: Datum(MI, [1, 2, 3], advantages_T=[0, math.nan, 0]),
        NonFiniteError,
        "Datum",
        "advantages_T",
    ),
    ("datum model input list", lambda: Datum([1, 2, 3], [1, 2, 3]), ValidationError, "Datum", "model_input"),
    ("sequence stop reason", lambda: SampledSequence([1], "eos"), ValidationError, "SampledSequence", "stop_reason"),
    (
        "sequence logprobs short",
        lambda: SampledSequence([1, 2], "stop", logprobs_T=[-1.0]),
        ShapeError,
        "SampledSequence",
        "logprobs_T",
    ),
    ("stop max_tokens 0", lambda: StopCondition(max_tokens=0), ConfigError, "StopCondition", "max_tokens"),
    ("stop max_tokens -3", lambda: StopCondition(max_tokens=-3), ConfigError, "StopCondition", "max_tokens"),
    ("stop string int", lambda: StopCondition(stop_strings=(1,)), ValidationError, "StopCondition", "stop_strings[0]"),
    ("step reward nan", lambda: StepResult(reward=math.nan, done=True), NonFiniteError, "StepResult", "reward"),
    ("step reward inf", lambda: StepResult(reward=math.inf, done=True), NonFiniteError, "StepResult", "reward"),
    ("step reward text", lambda: StepResult(reward="1", done=True), ValidationError, "StepResult", "reward"),
    ("step reward None", lambda: StepResult(reward=None, done=True), ValidationError, "StepResult", "reward"),
    ("step done 1", lambda: StepResult(reward=1.0, done=1), ValidationError, "StepResult", "done"),
    ("step done text", lambda: StepResult(reward=1.0, done="yes"), ValidationError, "StepResult", "done"),
    (
        "step metric text",
        lambda: StepResult(reward=1.0, done=True, metrics={"a": "x"}),
        ValidationError,
        "metrics",
        "metrics['a']",
    ),
    (
        "step metric key int",
        lambda: StepResult(reward=1.0, done=True, metrics={1: 1.0}),
        ValidationError,
        "metrics",
        "metrics[1]",
    ),
    (
        "step observation list",
        lambda: StepResult(reward=1.0, done=False, next_observation=[1, 2]),
        ValidationError,
        "StepResult",
        "next_observation",
    ),
    (
        "transition reward nan",
        lambda: Transition(MI, [1, 2], [-1.0, -1.0], reward=math.nan, done=True),
        NonFiniteError,
        "Transition",
        "reward",
    ),
    (
        "transition logprobs short",
        lambda: Transition(MI, [1, 2], [-1.0], reward=0.0, done=True),
        ShapeError,
        "Transition",
        "action_logprobs_T",
    ),
    ("trajectory int", lambda: Trajectory(transitions=[5]), ValidationError, "Trajectory", "transitions[0]"),
    (
        "group indices mismatch",
        lambda: TrajectoryGroup("g", (), (0,), (), ()),
        ShapeError,
        "TrajectoryGroup",
        "member_indices",
    ),
    ("eval no name", lambda: EvalSpec(name="", kind="exact_match", data="d"), ConfigError, "EvalSpec['']", "name"),
    ("eval kind", lambda: EvalSpec(name="a", kind="bogus", data="d"), ConfigError, EV, "kind"),
    ("eval limit 0", lambda: EvalSpec(name="a", kind="exact_match", data="d", limit=0), ConfigError, EV, "limit"),
    ("eval limit true", lambda: EvalSpec(name="a", kind="exact_match", data="d", limit=True), ConfigError, EV, "limit"),
    (
        "eval max_tokens 0",
        lambda: EvalSpec(name="a", kind="exact_match", data="d", max_tokens=0),
        ConfigError,
        EV,
        "max_tokens",
    ),
    (
        "eval temperature -1",
        lambda: EvalSpec(name="a", kind="exact_match", data="d", temperature=-1.0),
        ConfigError,
        EV,
        "temperature",
    ),
    (
        "eval temperature nan",
        lambda: EvalSpec(name="a", kind="exact_match", data="d", temperature=math.nan),
        NonFiniteError,
        EV,
        "temperature",
    ),
    ("eval regex without pattern", lambda: EvalSpec(name="a", kind="regex", data="d"), ConfigError, EV, "pattern"),
    ("eval regex broken", lambda: EvalSpec(name="a", kind="regex", data="d", pattern="(["), ConfigError, EV, "pattern"),
    (
        "eval pattern on exact",
        lambda: EvalSpec(name="a", kind="exact_match", data="d", pattern="x"),
        ConfigError,
        EV,
        "pattern",
    ),
    ("eval inspect without task", lambda: EvalSpec(name="a", kind="inspect"), ConfigError, EV, "task"),
    (
        "eval choice_norm",
        lambda: EvalSpec(name="a", kind="multiple_choice", data="d", choice_norm="max"),
        ConfigError,
        EV,
        "choice_norm",
    ),
    (
        "eval name slash",
        lambda: EvalSpec(name="a/b", kind="exact_match", data="d"),
        ConfigError,
        "EvalSpec['a/b']",
        "name",
    ),
    ("adam lr -1", lambda: AdamParams(learning_rate=-1.0), ConfigError, "AdamParams", "learning_rate"),
    ("adam lr nan", lambda: AdamParams(learning_rate=math.nan), NonFiniteError, "AdamParams", "learning_rate"),
    ("adam lr inf", lambda: AdamParams(learning_rate=math.inf), NonFiniteError, "AdamParams", "learning_rate"),
    ("adam lr true", lambda: AdamParams(learning_rate=True), ValidationError, "AdamParams", "learning_rate"),
    ("adam lr text", lambda: AdamParams(learning_rate="1e-3"), ValidationError, "AdamParams", "learning_rate"),
    ("adam beta1 1.5", lambda: AdamParams(learning_rate=1e-3, beta1=1.5), ConfigError, "AdamParams", "beta1"),
    ("adam beta2 -0.1", lambda: AdamParams(learning_rate=1e-3, beta2=-0.1), ConfigError, "AdamParams", "beta2"),
    ("adam eps 0", lambda: AdamParams(learning_rate=1e-3, eps=0.0), ConfigError, "AdamParams", "eps"),
    ("math answer empty", lambda: MathProblem("q", " "), ValidationError, "MathProblem", "answer"),
    ("math answer int", lambda: MathProblem("q", 5), ValidationError, "MathProblem", "answer"),
    ("list dataset empty", lambda: ListRLDataset([], 2), ConfigError, "ListRLDataset", "builders"),
    ("list dataset batch 0", lambda: ListRLDataset([object()], 0), ConfigError, "ListRLDataset", "batch_size"),
    ("list dataset seed -1", lambda: ListRLDataset([object()], 1, seed=-1), ConfigError, "ListRLDataset", "seed"),
    ("list dataset epochs 0", lambda: ListRLDataset([object()], 1, epochs=0), ConfigError, "ListRLDataset", "epochs"),
    (
        "list dataset index",
        lambda: ListRLDataset([object()], 1).get_batch(5),
        ValidationError,
        "ListRLDataset.get_batch",
        "index",
    ),
    (
        "list dataset index bool",
        lambda: ListRLDataset([object()], 1).get_batch(True),
        ValidationError,
        "ListRLDataset.get_batch",
        "index",
    ),
    (
        "generated dataset no batches",
        lambda: GeneratedRLDataset(lambda rng: None, 1, 0),
        ConfigError,
        "GeneratedRLDataset",
        "n_batches",
    ),
    (
        "problems row no answer",
        lambda: problems_from_rows([{"problem": "q"}]),
        ValidationError,
        "math_boxed.problems_from_rows",
        "rows[0]",
    ),
    (
        "problems empty box",
        lambda: problems_from_rows([{"problem": "q", "answer": "\\boxed{}"}]),
        ValidationError,
        "math_boxed.problems_from_rows",
        "rows[0].answer",
    ),
]

# bugs the suite found, fixed since (issue 15): each case with what went wrong before the fix
FIXED: list[tuple[Case, str]] = [
    (
        ("sampling stop tokens int", lambda: SamplingParams(stop_tokens=5), ValidationError, SP, "stop_tokens"),
        "raw TypeError ('int' object is not iterable) from the _int_tuple converter",
    ),
    (
        (
            "stop condition tokens int",
            lambda: StopCondition(stop_tokens=5),
            ValidationError,
            "StopCondition",
            "stop_tokens",
        ),
        "raw TypeError from the int_tuple converter",
    ),
    (
        (
            "stop condition token -1",
            lambda: StopCondition(stop_tokens=(-1,)),
            ConfigError,
            "StopCondition",
            "stop_tokens[0]",
        ),
        "accepted (SamplingParams refuses the same value)",
    ),
    (
        (
            "stop condition strings text",
            lambda: StopCondition(stop_strings="abc"),
            ValidationError,
            "StopCondition",
            "stop_strings",
        ),
        "a bare string is split into one-character stop strings ('a', 'b', 'c')",
    ),
    (
        (
            "step next_stop int",
            lambda: StepResult(reward=1.0, done=False, next_stop=5),
            ValidationError,
            "StepResult",
            "next_stop",
        ),
        "accepted; the rollout then hands 5 to the completer as a stop condition",
    ),
    (
        (
            "transition stop reason",
            lambda: Transition(MI, [1, 2], [-1.0, -1.0], reward=0.0, done=True, stop_reason="eos"),
            ValidationError,
            "Transition",
            "stop_reason",
        ),
        "accepted (SampledSequence refuses the same value)",
    ),
    (
        (
            "rollout failure kind",
            lambda: RolloutFailure(index=0, kind="bogus", message="x"),
            ValidationError,
            "RolloutFailure",
            "kind",
        ),
        "accepted; the metrics then count a failure kind that does not exist",
    ),
    (
        (
            "problems row not a mapping",
            lambda: problems_from_rows([["a"]]),
            ValidationError,
            "math_boxed.problems_from_rows",
            "rows[0]",
        ),
        "raw AttributeError ('list' object has no attribute 'get')",
    ),
]

PARAMS = [pytest.param(*case[1:], id=case[0]) for case in [*CASES, *(case for case, _ in FIXED)]]


@pytest.mark.parametrize(("build", "kind", "where", "field"), PARAMS)
def test_bad_record(build: Callable[[], object], kind: type[Exception], where: str, field: str) -> None:
    raises_exactly(build, kind, field, where)


@given(st.sampled_from(["temperature", "top_p"]), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_no_sampling_float_takes_a_non_finite_value(field: str, value: float) -> None:
    raises_exactly(lambda: SamplingParams(**{field: value}), NonFiniteError, field, "SamplingParams")


@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=8), st.data())
def test_any_negative_token_id_is_refused_at_its_position(tokens: list[int], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(tokens) - 1))
    bad = list(tokens)
    bad[index] = -data.draw(st.integers(1, 2**40))
    raises_exactly(lambda: TokenChunk(np.array(bad)), ValidationError, "tokens_T", "TokenChunk")
