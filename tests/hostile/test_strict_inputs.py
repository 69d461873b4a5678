"""Strict inputs (issue 15, part 2): every bad input below is refused with one exact typed error naming the field.

Boundaries: chat rows (JSONL lines and rows given in code), preference rows, SL data (rows with nothing to train on),
Python records (token ids, logprobs, text), configs built from JSON and configs from ``key=value`` overrides (the
command line). Each case asserts the error's exact class and its ``field`` (and ``where`` where a row is named); no
case may end in a raw traceback, a hang or silent acceptance.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.byte_renderer import ByteRenderer
from tests.fakes import FakeBackend

from tinkerflow import Datum, Message, ModelInput, SampledSequence, SampleResponse, TextPart, TokenChunk, ToolCall
from tinkerflow import ToolSpec as Spec
from tinkerflow._validate import LOGPROB_TOLERANCE
from tinkerflow.chat import Conversation
from tinkerflow.chat_format import MESSAGE_KEYS, ChatFormatError, chat_row_from_json, parse_chat_line
from tinkerflow.cli import main
from tinkerflow.config import SLConfig
from tinkerflow.config_fields import apply_overrides
from tinkerflow.errors import ConfigError, DTypeError, SerializationError, TinkerflowError, ValidationError
from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.data import (
    LAYOUT_KEYS,
    PREFERENCE_KEYS,
    PreferenceFormatError,
    labeled_comparison_from_json,
    parse_preference_line,
    preference_row_from_hf,
)
from tinkerflow.preference.records import Comparison, LabeledComparison
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import StopCondition, Transition
from tinkerflow.rows import DataError
from tinkerflow.sampling import SamplingParams
from tinkerflow.serde import ConfigDataError, RecordDataError, structure
from tinkerflow.shell.io.data import parse_chat_rows
from tinkerflow.shell.recipes.dpo import prepare_dpo_data
from tinkerflow.shell.recipes.sl import prepare_sl_data, run_sl

# A case: (id, a thunk that must raise, the exact error class, the field it names).
Case = tuple[str, Callable[[], object], type[Exception], str]


def _raises_exactly(thunk: Callable[[], object], kind: type[Exception], field: str) -> Exception:
    with pytest.raises(TinkerflowError) as info:
        thunk()
    error = info.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert isinstance(error, ValidationError), error
    assert error.field == field, str(error)
    assert f".{field}:" in str(error) or str(error).startswith(f"{field}:"), str(error)
    return error


# -- chat rows -----------------------------------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}


def _line(row: object) -> str:
    return json.dumps(row)


def _chat(*messages: object, **extra: object) -> str:
    return _line({"messages": list(messages), **extra})


def _deep(depth: int) -> str:
    return '{"messages": ' + "[" * depth + "]" * depth + "}"


def _deep_dict(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


# (id, JSONL line, field)
CHAT_LINES: list[tuple[str, str, str]] = [
    ("typo content", _chat(USER, {"role": "assistant", "contnet": "x"}), "messages[1].contnet"),
    ("typo role", _chat({"rol": "user", "content": "x"}, ASSISTANT), "messages[0].rol"),
    ("weight 0", _chat(USER, {**ASSISTANT, "weight": 0}), "messages[1].weight"),
    ("weight 1", _chat(USER, {**ASSISTANT, "weight": 1}), "messages[1].weight"),
    ("weight on user", _chat({**USER, "weight": 0}, ASSISTANT), "messages[0].weight"),
    ("tool_call singular", _chat(USER, {**ASSISTANT, "tool_call": [CALL]}), "messages[1].tool_call"),
    ("refusal key", _chat(USER, {**ASSISTANT, "refusal": "no"}), "messages[1].refusal"),
    ("function_call key", _chat(USER, {**ASSISTANT, "function_call": {}}), "messages[1].function_call"),
    ("row typo messages", _line({"mesages": [USER, ASSISTANT]}), "mesages"),
    ("row typo tools", _chat(USER, ASSISTANT, tols=[TOOL]), "tols"),
    ("row extra id", _chat(USER, ASSISTANT, id=3), "id"),
    (
        "call typo function",
        _chat(USER, {**ASSISTANT, "tool_calls": [{"fucntion": {}}]}),
        "messages[1].tool_calls[0].fucntion",
    ),
    (
        "call function typo",
        _chat(USER, {**ASSISTANT, "tool_calls": [{"type": "function", "function": {"name": "f", "argument": "{}"}}]}),
        "messages[1].tool_calls[0].function.argument",
    ),
    (
        "call extra key",
        _chat(USER, {**ASSISTANT, "tool_calls": [{**CALL, "index": 0}]}),
        "messages[1].tool_calls[0].index",
    ),
    (
        "call type",
        _chat(USER, {**ASSISTANT, "tool_calls": [{**CALL, "type": "code"}]}),
        "messages[1].tool_calls[0].type",
    ),
    (
        "tool parameters typo",
        _chat(USER, ASSISTANT, tools=[{"type": "function", "function": {"name": "f", "paramters": {}}}]),
        "tools[0].function.paramters",
    ),
    ("tool strict", _chat(USER, ASSISTANT, tools=[{**TOOL, "strict": True}]), "tools[0].strict"),
    ("tool type", _chat(USER, ASSISTANT, tools=[{**TOOL, "type": "retrieval"}]), "tools[0].type"),
    (
        "text part extra",
        _chat({"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {}}]}, ASSISTANT),
        "messages[0].content[0].cache_control",
    ),
    (
        "image part extra",
        _chat({"role": "user", "content": [{"type": "image", "data": "AAAA", "url": "x"}]}, ASSISTANT),
        "messages[0].content[0].url",
    ),
    ("no content", _chat(USER, {"role": "assistant"}), "messages[1].content"),
    (
        "thinking twice",
        _chat(USER, {**ASSISTANT, "thinking": "a", "reasoning_content": "b"}),
        "messages[1].reasoning_content",
    ),
    ("deep nesting", _deep(100_000), "line"),
    (
        "deep object",
        '{"messages": [{"role": "user", "content": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}]}",
        "line",
    ),
    ("surrogate content", _chat({"role": "user", "content": "a\ud800b"}, ASSISTANT), "messages[0].content"),
    (
        "surrogate text part",
        _chat({"role": "user", "content": [{"type": "text", "text": "\udc00"}]}, ASSISTANT),
        "messages[0].content[0].text",
    ),
    ("surrogate thinking", _chat(USER, {**ASSISTANT, "thinking": "\ud83d"}), "messages[1].thinking"),
    ("surrogate reasoning", _chat(USER, {**ASSISTANT, "reasoning_content": "\ud83d"}), "messages[1].thinking"),
    ("surrogate name", _chat({**USER, "name": "\ud800"}, ASSISTANT), "messages[0].name"),
    (
        "surrogate call name",
        _chat(USER, {**ASSISTANT, "tool_calls": [{"function": {"name": "\ud800", "arguments": "{}"}}]}),
        "messages[1].tool_calls[0].function.name",
    ),
    (
        "surrogate call id",
        _chat(USER, {**ASSISTANT, "tool_calls": [{**CALL, "id": "\ud800"}]}),
        "messages[1].tool_calls[0].id",
    ),
    (
        "surrogate tool result id",
        _chat(USER, {**ASSISTANT, "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "\ud800", "content": "x"}),
        "messages[2].tool_call_id",
    ),
    (
        "surrogate tool description",
        _chat(USER, ASSISTANT, tools=[{"type": "function", "function": {"name": "f", "description": "\ud800"}}]),
        "tools[0].description",
    ),
    ("trainable text", _chat({**USER, "trainable": "yes"}, ASSISTANT), "messages[0].trainable"),
    ("content number", _chat({"role": "user", "content": 5}, ASSISTANT), "messages[0].content"),
    ("unknown role", _chat({"role": "bot", "content": "x"}), "messages[0].role"),
    ("truncated json", '{"messages": [', "line"),
    (
        "tool name number",
        _chat(USER, ASSISTANT, tools=[{"type": "function", "function": {"name": 5}}]),
        "tools[0].name",
    ),
]


@pytest.mark.hostile("rows")
@pytest.mark.parametrize(("line", "field"), [case[1:] for case in CHAT_LINES], ids=[case[0] for case in CHAT_LINES])
def test_bad_chat_line(line: str, field: str) -> None:
    error = _raises_exactly(lambda: parse_chat_line(line, "d.jsonl:3"), ChatFormatError, field)
    assert isinstance(error, ChatFormatError)
    assert error.where == "d.jsonl:3"


@pytest.mark.hostile("rows")
def test_an_unknown_key_names_the_closest_known_key() -> None:
    error = _raises_exactly(lambda: parse_chat_line(CHAT_LINES[0][1], "d.jsonl:1"), ChatFormatError, CHAT_LINES[0][2])
    assert "did you mean 'content'?" in str(error)
    weight = _raises_exactly(lambda: parse_chat_line(CHAT_LINES[2][1], "d.jsonl:1"), ChatFormatError, CHAT_LINES[2][2])
    assert "trainable" in str(weight)
    assert "customized" in str(weight)


@pytest.mark.hostile("rows")
def test_invalid_utf8_line() -> None:
    _raises_exactly(lambda: parse_chat_line(b'{"messages": "\xff"}', "d.jsonl:9"), ChatFormatError, "line")


# Rows given in code (memory rows) may hold Python values JSON cannot; (id, row, field).
MEMORY_ROWS: list[tuple[str, dict[str, object], str]] = [
    (
        "arguments not json",
        {"messages": [USER, {**ASSISTANT, "tool_calls": [{"function": {"name": "f", "arguments": {"s": {1, 2}}}}]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "arguments too deep",
        {"messages": [USER, {**ASSISTANT, "tool_calls": [{"function": {"name": "f", "arguments": _deep_dict(5000)}}]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "parameters not json",
        {"messages": [USER, ASSISTANT], "tools": [{"name": "f", "parameters": {"x": object()}}]},
        "tools[0].parameters",
    ),
    ("memory row extra key", {"messages": [USER, ASSISTANT], "source": "web"}, "source"),
    ("memory weight", {"messages": [USER, {**ASSISTANT, "weight": 0}]}, "messages[1].weight"),
]


@pytest.mark.hostile("rows")
@pytest.mark.parametrize(("row", "field"), [case[1:] for case in MEMORY_ROWS], ids=[case[0] for case in MEMORY_ROWS])
def test_bad_memory_chat_row(row: dict[str, object], field: str) -> None:
    error = _raises_exactly(lambda: parse_chat_rows([row]), ChatFormatError, field)
    assert isinstance(error, ChatFormatError)
    assert error.where == "<memory>[0]"


_identifiers = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)


@pytest.mark.hostile("rows")
@given(st.sampled_from(sorted(MESSAGE_KEYS - {"role"})), st.data())
def test_any_unknown_message_key_is_refused_with_a_suggestion(known: str, data: st.DataObject) -> None:
    """A known key with one character dropped (a typo) is refused and the known key suggested; any other unknown
    key is refused too."""
    position = data.draw(st.integers(0, len(known) - 1))
    typo = known[:position] + known[position + 1 :]
    if typo in MESSAGE_KEYS or typo == "weight" or len(known) < 4:
        return
    error = _raises_exactly(
        lambda: chat_row_from_json({"messages": [{"role": "user", typo: "x"}]}), ChatFormatError, f"messages[0].{typo}"
    )
    assert repr(known) in error.fix, error.fix
    other = data.draw(_identifiers.filter(lambda key: key not in MESSAGE_KEYS))
    _raises_exactly(
        lambda: chat_row_from_json({"messages": [{"role": "user", "content": "x", other: 1}]}),
        ChatFormatError,
        f"messages[0].{other}",
    )


def test_null_keys_count_as_absent_and_good_rows_still_read() -> None:
    """A key holding null is as good as absent (HF datasets fill missing columns with None): not an error."""
    row = {"messages": [{**USER, "weight": None, "thinking": None}, ASSISTANT], "id": None}
    assert len(chat_row_from_json(row).messages) == 2
    assert chat_row_from_json({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}]})


# -- SL rows with nothing to train on ------------------------------------------------------------------------------


def _sl_config(tmp_path: pathlib.Path, **fields: object) -> SLConfig:
    values: dict[str, object] = {
        "train_data": "<memory>",
        "run_dir": str(tmp_path / "run"),
        "batch_size": 2,
        "learning_rate": 1.0,
        "max_length": 64,
        "test_fraction": 0.0,
        "num_samples_shown": 0,
    }
    values.update(fields)
    return SLConfig(**values)  # type: ignore[arg-type]


GOOD = {"messages": [USER, ASSISTANT]}
NOTHING_TO_TRAIN: list[tuple[str, dict[str, object]]] = [
    ("only system", {"messages": [{"role": "system", "content": "be brief"}]}),
    ("no assistant", {"messages": [{"role": "system", "content": "s"}, USER]}),
    ("only user", {"messages": [USER]}),
    ("ends with user", {"messages": [{"role": "system", "content": "s"}, USER, USER]}),
]


@pytest.mark.hostile("rows")
@pytest.mark.parametrize("row", [case[1] for case in NOTHING_TO_TRAIN], ids=[case[0] for case in NOTHING_TO_TRAIN])
def test_a_row_with_nothing_to_train_on_follows_the_bad_row_policy(
    tmp_path: pathlib.Path, row: dict[str, object]
) -> None:
    rows = [GOOD, GOOD, row, GOOD]
    renderer = ByteRenderer()
    error = _raises_exactly(
        lambda: prepare_sl_data(_sl_config(tmp_path), renderer, train_rows=rows), DataError, "messages"
    )
    assert error.where == "<memory>[2]"
    assert "nothing to train on" in str(error)
    data = prepare_sl_data(_sl_config(tmp_path, bad_rows="skip"), renderer, train_rows=rows)
    assert (len(data.train), data.skipped_rows) == (3, 1)
    assert all(datum.weights_T is not None and datum.weights_T.sum() > 0 for datum in data.train)


@pytest.mark.hostile("rows")
def test_held_out_rows_with_nothing_to_train_on_are_bad_rows_too(tmp_path: pathlib.Path) -> None:
    renderer = ByteRenderer()
    test_rows = [GOOD, NOTHING_TO_TRAIN[0][1]]
    error = _raises_exactly(
        lambda: prepare_sl_data(_sl_config(tmp_path), renderer, train_rows=[GOOD], test_rows=test_rows),
        DataError,
        "messages",
    )
    assert error.where == "<memory:test>[1]"


@pytest.mark.hostile("rows")
def test_a_dataset_with_no_trainable_token_fails_before_any_work(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nothing.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for _, row in NOTHING_TO_TRAIN))
    config = _sl_config(tmp_path, train_data=str(path), bad_rows="skip")
    error = _raises_exactly(lambda: run_sl(config, FakeBackend(), ByteRenderer(), sinks=()), DataError, "rows")
    assert error.where == str(path)
    assert "4 bad rows" in str(error)
    assert not (tmp_path / "run").exists()  # no run directory, no client, no step


# -- preference rows -----------------------------------------------------------------------------------------------

_A = {"role": "assistant", "content": "4"}
_B = {"role": "assistant", "content": "5"}
_EMPTY = {"role": "assistant", "content": ""}


def _cookbook(a: object, b: object, label: str = "A", **inner: object) -> dict[str, object]:
    return {
        "comparison": {"prompt_conversation": [USER], "completion_A": a, "completion_B": b, **inner},
        "label": label,
    }


PREFERENCE_ROWS: list[tuple[str, dict[str, object], str]] = [
    ("label b on chosen", {"prompt": "q", "chosen": "a", "rejected": "b", "label": "b"}, "label"),
    ("label B on chosen", {"prompt": "q", "chosen": "a", "rejected": "b", "label": "B"}, "label"),
    ("label tie on chosen", {"prompt": "q", "chosen": "a", "rejected": "b", "label": "tie"}, "label"),
    ("label b full", {"chosen": [USER, _A], "rejected": [USER, _B], "label": "b"}, "label"),
    ("label number", {"prompt": "q", "chosen": "a", "rejected": "b", "label": 1}, "label"),
    ("label bad ab", {"prompt": "q", "completion_a": "a", "completion_b": "b", "label": "c"}, "label"),
    ("identical text", {"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected"),
    ("identical lists", {"prompt": "q", "chosen": [_A], "rejected": [_A]}, "rejected"),
    ("identical ab", {"prompt": "q", "completion_a": "x", "completion_b": "x", "label": "a"}, "completion_b"),
    ("identical ab tie", {"prompt": "q", "completion_a": "x", "completion_b": "x", "label": "tie"}, "completion_b"),
    ("identical cookbook", _cookbook([_A], [_A]), "comparison.completion_B"),
    ("identical full", {"chosen": [USER, _A], "rejected": [USER, _A]}, "chosen"),
    ("empty chosen", {"prompt": "q", "chosen": "", "rejected": "b"}, "chosen"),
    ("blank rejected", {"prompt": "q", "chosen": "a", "rejected": "  \n"}, "rejected"),
    ("empty list message", {"prompt": "q", "chosen": [_EMPTY], "rejected": [_B]}, "chosen"),
    (
        "empty completion_a",
        {"prompt": "q", "completion_a": [_EMPTY], "completion_b": "b", "label": "b"},
        "completion_a",
    ),
    ("empty cookbook", _cookbook([_A], [_EMPTY]), "comparison.completion_B"),
    ("empty full", {"chosen": [USER, _A], "rejected": [USER, _EMPTY]}, "rejected"),
    ("typo rejected", {"prompt": "q", "chosen": "a", "rejectd": "b"}, "rejectd"),
    ("typo prompt", {"promt": "q", "chosen": [USER, _A], "rejected": [USER, _B]}, "promt"),
    ("typo label", {"prompt": "q", "completion_a": "a", "completion_b": "b", "labels": "a"}, "labels"),
    ("typo tools", {"prompt": "q", "chosen": "a", "rejected": "b", "tool": []}, "tool"),
    ("extra score", {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 9.0}, "score_chosen"),
    ("mixed layouts", {"prompt": "q", "chosen": "a", "completion_a": "a", "completion_b": "b", "label": "a"}, "chosen"),
    ("cookbook inner typo", _cookbook([_A], [_B], completion_a=[_A]), "comparison.completion_a"),
    (
        "message typo",
        {"prompt": "q", "chosen": [{"role": "assistant", "contnet": "x"}], "rejected": "b"},
        "chosen[0].contnet",
    ),
    ("message weight", {"prompt": "q", "chosen": [{**_A, "weight": 0}], "rejected": "b"}, "chosen[0].weight"),
    ("surrogate chosen", {"prompt": "q", "chosen": "\ud800", "rejected": "b"}, "chosen[0].content"),
    ("surrogate prompt", {"prompt": "\udfff", "chosen": "a", "rejected": "b"}, "prompt[0].content"),
    ("no layout", {"promt": "q", "chosne": "a"}, "row"),
]


@pytest.mark.hostile("rows")
@pytest.mark.parametrize(
    ("row", "field"), [case[1:] for case in PREFERENCE_ROWS], ids=[case[0] for case in PREFERENCE_ROWS]
)
def test_bad_preference_row(row: dict[str, object], field: str) -> None:
    error = _raises_exactly(lambda: parse_preference_line(json.dumps(row), "p.jsonl:2"), PreferenceFormatError, field)
    assert isinstance(error, PreferenceFormatError)
    assert error.where == "p.jsonl:2"


@pytest.mark.hostile("rows")
def test_preference_typos_name_the_closest_key() -> None:
    error = _raises_exactly(
        lambda: labeled_comparison_from_json({"prompt": "q", "chosen": "a", "rejectd": "b"}),
        PreferenceFormatError,
        "rejectd",
    )
    assert "did you mean 'rejected'?" in error.fix
    lost = _raises_exactly(
        lambda: labeled_comparison_from_json({"promt": "q", "chosne": "a"}), PreferenceFormatError, "row"
    )
    assert "'chosne' -> 'chosen'" in lost.fix
    assert "'promt' -> 'prompt'" in lost.fix


@pytest.mark.hostile("rows")
def test_preference_deep_line_and_label_a_on_chosen() -> None:
    _raises_exactly(lambda: parse_preference_line(_deep(100_000), "p.jsonl:1"), PreferenceFormatError, "line")
    labeled = labeled_comparison_from_json({"prompt": "q", "chosen": "a", "rejected": "b", "label": "A"})
    assert labeled.label == "a"  # a label agreeing with the keys is redundant, not wrong


@pytest.mark.hostile("rows")
@given(st.sampled_from(sorted(LAYOUT_KEYS)), _identifiers)
def test_any_unknown_preference_key_is_refused(layout: str, key: str) -> None:
    rows = {
        "prompt_chosen_rejected": {"prompt": "q", "chosen": "a", "rejected": "b"},
        "chosen_rejected": {"chosen": [USER, _A], "rejected": [USER, _B]},
        "ab_label": {"prompt": "q", "completion_a": "a", "completion_b": "b", "label": "a"},
        "cookbook": _cookbook([_A], [_B]),
    }
    row = rows[layout]
    if key in PREFERENCE_KEYS:  # a known key (of this layout or another, which would change the layout)
        return
    _raises_exactly(lambda: labeled_comparison_from_json({**row, key: 1}), PreferenceFormatError, key)


def test_hf_rows_leave_out_a_datasets_other_columns() -> None:
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 9.0, "prompt_id": "x1", "messages": []}
    assert preference_row_from_hf(row, "hf[0]").label == "a"
    _raises_exactly(lambda: preference_row_from_hf({**row, "label": "b"}, "hf[1]"), PreferenceFormatError, "label")


# -- Python records ------------------------------------------------------------------------------------------------

MI = ModelInput.from_tokens([1, 2, 3])
POSITIVE = 2 * LOGPROB_TOLERANCE
RECORDS: list[Case] = [
    ("chunk bool list", lambda: TokenChunk([True, False]), DTypeError, "tokens_T"),
    ("chunk bool array", lambda: TokenChunk(np.array([True])), DTypeError, "tokens_T"),
    ("chunk mixed bool", lambda: TokenChunk([1, True, 3]), DTypeError, "tokens_T"),
    ("chunk numpy bool item", lambda: TokenChunk([1, np.bool_(True)]), DTypeError, "tokens_T"),
    ("from_tokens bool", lambda: ModelInput.from_tokens([False]), DTypeError, "tokens_T"),
    ("append bool", lambda: MI.append_tokens([True]), DTypeError, "tokens_T"),
    ("datum targets bool", lambda: Datum(MI, [True, False, True]), DTypeError, "target_tokens_T"),
    (
        "datum logprob positive",
        lambda: Datum(MI, [1, 2, 3], logprobs_T=[-1.0, 0.5, -2.0]),
        ValidationError,
        "logprobs_T",
    ),
    (
        "datum logprob just over",
        lambda: Datum(MI, [1, 2, 3], logprobs_T=[0.0, 0.0, POSITIVE]),
        ValidationError,
        "logprobs_T",
    ),
    ("datum logprob bool", lambda: Datum(MI, [1, 2, 3], logprobs_T=[False, False, False]), DTypeError, "logprobs_T"),
    ("sequence tokens bool", lambda: SampledSequence([True], "stop"), DTypeError, "tokens_T"),
    (
        "sequence logprob positive",
        lambda: SampledSequence([1, 2], "stop", logprobs_T=[-0.1, 3.0]),
        ValidationError,
        "logprobs_T",
    ),
    (
        "sequence topk ids bool",
        lambda: SampledSequence([1], "stop", topk_token_ids_T_K=[[True, False]], topk_logprobs_T_K=[[-1.0, -2.0]]),
        DTypeError,
        "topk_token_ids_T_K",
    ),
    (
        "sequence topk logprob positive",
        lambda: SampledSequence([1], "stop", topk_token_ids_T_K=[[1, 2]], topk_logprobs_T_K=[[-1.0, 0.25]]),
        ValidationError,
        "topk_logprobs_T_K",
    ),
    (
        "prompt logprob positive",
        lambda: SampleResponse((), prompt_logprobs_T=[np.nan, 1.0]),
        ValidationError,
        "prompt_logprobs_T",
    ),
    ("prompt logprob bool", lambda: SampleResponse((), prompt_logprobs_T=[True]), DTypeError, "prompt_logprobs_T"),
    (
        "prompt topk ids bool",
        lambda: SampleResponse(
            (), prompt_logprobs_T=[np.nan], topk_prompt_token_ids_T_K=[[True]], topk_prompt_logprobs_T_K=[[-1.0]]
        ),
        DTypeError,
        "topk_prompt_token_ids_T_K",
    ),
    (
        "prompt topk logprob positive",
        lambda: SampleResponse(
            (), prompt_logprobs_T=[np.nan], topk_prompt_token_ids_T_K=[[1]], topk_prompt_logprobs_T_K=[[0.5]]
        ),
        ValidationError,
        "topk_prompt_logprobs_T_K",
    ),
    (
        "transition tokens bool",
        lambda: Transition(MI, [True, True], [-1.0, -1.0], reward=0.0, done=True),
        DTypeError,
        "action_tokens_T",
    ),
    (
        "transition logprob positive",
        lambda: Transition(MI, [1, 2], [-1.0, 0.7], reward=0.0, done=True),
        ValidationError,
        "action_logprobs_T",
    ),
    ("sampling stop token bool", lambda: SamplingParams(stop_tokens=(True,)), ValidationError, "stop_tokens[0]"),
    ("stop condition token bool", lambda: StopCondition(stop_tokens=(False,)), ValidationError, "stop_tokens[0]"),
    ("message surrogate", lambda: Message(role="user", content="\ud800"), ValidationError, "content"),
    ("text part surrogate", lambda: TextPart("x\udfffy"), ValidationError, "text"),
    ("tool call surrogate", lambda: ToolCall(name="\ud800"), ValidationError, "name"),
    ("tool spec surrogate", lambda: Spec(name="f", description="\ud800"), ValidationError, "description"),
]


@pytest.mark.hostile("records")
@pytest.mark.parametrize(("build", "kind", "field"), [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
def test_bad_record(build: Callable[[], object], kind: type[Exception], field: str) -> None:
    _raises_exactly(build, kind, field)


def test_logprob_rounding_headroom_is_kept_as_given() -> None:
    within = np.float32(LOGPROB_TOLERANCE / 2)
    datum = Datum(MI, [1, 2, 3], logprobs_T=[0.0, within, -1.0])
    assert datum.logprobs_T is not None
    assert datum.logprobs_T[1] == within


@pytest.mark.hostile("records")
@given(
    st.lists(st.floats(-30.0, 0.0, width=32), min_size=1, max_size=16),
    st.floats(2.0**-10, 1e6, width=32),  # every value > LOGPROB_TOLERANCE, exact in float32
    st.data(),
)
def test_any_positive_logprob_is_refused(values: list[float], positive: float, data: st.DataObject) -> None:
    assert SampledSequence(list(range(len(values))), "stop", logprobs_T=values).logprobs_T is not None
    bad = list(values)
    index = data.draw(st.integers(0, len(values) - 1))
    bad[index] = positive
    error = _raises_exactly(
        lambda: SampledSequence(list(range(len(values))), "stop", logprobs_T=bad), ValidationError, "logprobs_T"
    )
    assert f"flat index {index}" in str(error)


# -- configs built from JSON ---------------------------------------------------------------------------------------

SL_BASE: dict[str, object] = {"train_data": "d.jsonl"}
DPO_BASE: dict[str, object] = {"train_data": "p.jsonl"}
RL_BASE: dict[str, object] = {}

# (id, config class, fields over the base, field named)
CONFIG_JSON: list[tuple[str, type, dict[str, object], str]] = [
    ("batch_size fraction", SLConfig, {"batch_size": 2.5}, "batch_size"),
    ("batch_size true", SLConfig, {"batch_size": True}, "batch_size"),
    ("max_length fraction", SLConfig, {"max_length": 64.9}, "max_length"),
    ("save_every false", SLConfig, {"save_every": False}, "save_every"),
    ("seed text", SLConfig, {"seed": "3"}, "seed"),
    ("epochs fraction", SLConfig, {"epochs": 1.5}, "epochs"),
    ("max_steps true", SLConfig, {"max_steps": True}, "max_steps"),
    ("eval_every list", SLConfig, {"eval_every": [1]}, "eval_every"),
    ("lora_rank text", SLConfig, {"lora_rank": "8"}, "lora_rank"),
    ("test_fraction text", SLConfig, {"test_fraction": "0.1"}, "test_fraction"),
    ("test_fraction true", SLConfig, {"test_fraction": True}, "test_fraction"),
    ("learning_rate text", SLConfig, {"learning_rate": "1e-4"}, "learning_rate"),
    ("run_dir number", SLConfig, {"run_dir": 5}, "run_dir"),
    ("renderer number", SLConfig, {"renderer": 5}, "renderer"),
    ("train_data list", SLConfig, {"train_data": ["a.jsonl"]}, "train_data"),
    ("backend case", SLConfig, {"backend": "Local"}, "backend"),
    ("bad_rows ignore", SLConfig, {"bad_rows": "ignore"}, "bad_rows"),
    ("train_on number", SLConfig, {"train_on": 1}, "train_on"),
    ("log_to item", SLConfig, {"log_to": ["wandb", 3]}, "log_to[1]"),
    ("warmup fraction", SLConfig, {"lr_schedule": {"kind": "linear", "warmup_steps": 2.5}}, "lr_schedule.warmup_steps"),
    ("schedule kind number", SLConfig, {"lr_schedule": {"kind": 1}}, "lr_schedule.kind"),
    ("schedule unknown key", SLConfig, {"lr_schedule": {"kind": "linear", "warmup": 3}}, "lr_schedule.warmup"),
    ("unknown key", SLConfig, {"batchsize": 3}, "batchsize"),
    ("train_data missing", SLConfig, {"train_data": None}, "train_data"),
    ("keep_last fraction", SLConfig, {"keep_last": 2.5}, "keep_last"),
    ("dpo beta text", DPOConfig, {"beta": "0.1"}, "beta"),
    ("dpo beta true", DPOConfig, {"beta": True}, "beta"),
    ("dpo ties zero", DPOConfig, {"ties": 0}, "ties"),
    ("dpo batch_size fraction", DPOConfig, {"batch_size": 2.5}, "batch_size"),
    ("dpo max_length true", DPOConfig, {"max_length": True}, "max_length"),
    ("dpo layout typo", DPOConfig, {"layout": "ab"}, "layout"),
    ("rl group_size fraction", RLConfig, {"group_size": 2.5}, "group_size"),
    ("rl steps false", RLConfig, {"steps": False}, "steps"),
    ("rl normalize one", RLConfig, {"normalize_advantages": 1}, "normalize_advantages"),
    ("rl normalize text", RLConfig, {"normalize_advantages": "false"}, "normalize_advantages"),
    ("rl temperature true", RLConfig, {"temperature": True}, "temperature"),
    ("rl env_args null", RLConfig, {"env_args": {"a": None}}, "env_args['a']"),
    ("rl env_args list", RLConfig, {"env_args": {"a": [1]}}, "env_args['a']"),
    ("rl max_turns fraction", RLConfig, {"max_turns": 1.5}, "max_turns"),
    ("rl timeout text", RLConfig, {"episode_timeout_s": "10"}, "episode_timeout_s"),
    ("rl max_tokens fraction", RLConfig, {"max_tokens": 16.5}, "max_tokens"),
]
_BASES: dict[type, dict[str, object]] = {SLConfig: SL_BASE, DPOConfig: DPO_BASE, RLConfig: RL_BASE}


@pytest.mark.hostile("configs")
@pytest.mark.parametrize(
    ("cls", "fields", "field"), [case[1:] for case in CONFIG_JSON], ids=[case[0] for case in CONFIG_JSON]
)
def test_bad_config_json(cls: type, fields: dict[str, object], field: str) -> None:
    data = {key: value for key, value in {**_BASES[cls], **fields}.items() if value is not None}
    error = _raises_exactly(lambda: structure(json.loads(json.dumps(data)), cls), ConfigDataError, field)
    assert isinstance(error, ConfigError)
    assert isinstance(error, SerializationError)
    assert isinstance(error, ValidationError)
    assert error.where == cls.__name__


@pytest.mark.hostile("configs")
def test_the_brief_example_message() -> None:
    with pytest.raises(ConfigError, match=r"^SLConfig\.batch_size: must be an int, got 2\.5\."):
        structure({"train_data": "d.jsonl", "batch_size": 2.5}, SLConfig)


def test_whole_floats_and_ints_for_floats_are_not_coercions() -> None:
    config = structure({"train_data": "d.jsonl", "batch_size": 4.0, "learning_rate": 1, "max_steps": 1e3}, SLConfig)
    assert (config.batch_size, config.learning_rate, config.max_steps) == (4, 1.0, 1000)
    assert type(config.batch_size) is int
    assert type(config.learning_rate) is float


@pytest.mark.hostile("records")
def test_a_bad_record_value_is_a_record_data_error() -> None:
    text = '{"model_input": {"chunks": [{"type": "tokens", "tokens_T": [1]}]}, "target_tokens_T": [true]}'
    error = _raises_exactly(lambda: structure(json.loads(text), Datum), RecordDataError, "target_tokens_T")
    assert isinstance(error, SerializationError)
    assert not isinstance(error, ConfigError)


@pytest.mark.hostile("configs")
@given(st.sampled_from(["batch_size", "max_length", "epochs", "save_every", "seed", "lora_rank"]), st.data())
def test_no_int_field_takes_a_bool_or_a_fraction(field: str, data: st.DataObject) -> None:
    value = data.draw(
        st.one_of(st.booleans(), st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()))
    )
    _raises_exactly(lambda: structure({"train_data": "d.jsonl", field: value}, SLConfig), ConfigDataError, field)


# -- configs from key=value overrides (the command line) -----------------------------------------------------------

OVERRIDES: list[tuple[str, type, str, str]] = [
    ("batch_size=2.5", SLConfig, "batch_size=2.5", "batch_size"),
    ("batch_size=true", SLConfig, "batch_size=true", "batch_size"),
    ("max_length=64.9", SLConfig, "max_length=64.9", "max_length"),
    ("save_every=false", SLConfig, "save_every=false", "save_every"),
    ("epochs=null", SLConfig, "epochs=null", "epochs"),
    ("seed=1.5", SLConfig, "seed=1.5", "seed"),
    ("eval_every=ten", SLConfig, "eval_every=ten", "eval_every"),
    ("warmup=0.5", SLConfig, "lr_schedule.warmup_steps=0.5", "lr_schedule.warmup_steps"),
    ("test_fraction=true", SLConfig, "test_fraction=true", "test_fraction"),
    ("learning_rate=abc", SLConfig, "learning_rate=abc", "learning_rate"),
    ("backend=1", SLConfig, "backend=1", "backend"),
    ("log_to=[1]", SLConfig, "log_to=[1]", "log_to[0]"),
    ("dpo beta=false", DPOConfig, "beta=false", "beta"),
    ("dpo batch_size=1.5", DPOConfig, "batch_size=1.5", "batch_size"),
    ("rl group_size=true", RLConfig, "group_size=true", "group_size"),
    ("rl steps=2.5", RLConfig, "steps=2.5", "steps"),
    ("rl normalize=1", RLConfig, "normalize_advantages=1", "normalize_advantages"),
    ("rl env_args.a=[1]", RLConfig, "env_args.a=[1]", "env_args['a']"),
]


@pytest.mark.hostile("cli")
@pytest.mark.parametrize(
    ("cls", "override", "field"), [case[1:] for case in OVERRIDES], ids=[case[0] for case in OVERRIDES]
)
def test_bad_override(cls: type, override: str, field: str) -> None:
    _raises_exactly(lambda: apply_overrides(_BASES[cls], [override], cls), ConfigDataError, field)


def test_text_fields_take_the_override_text_as_written() -> None:
    config = apply_overrides(SL_BASE, ["run_dir=2024", "renderer=null", "base_model=123"], SLConfig)
    assert (config.run_dir, config.renderer, config.base_model) == ("2024", None, "123")


CLI_CASES: list[tuple[str, dict[str, object], list[str], str]] = [
    ("file batch_size fraction", {"batch_size": 2.5}, [], "SLConfig.batch_size: must be an int, got 2.5."),
    ("file save_every false", {"save_every": False}, [], "SLConfig.save_every: must be an int, got false"),
    ("override batch_size", {}, ["batch_size=2.5"], "SLConfig.batch_size: must be an int, got 2.5."),
    ("override batch_size true", {}, ["batch_size=true"], "SLConfig.batch_size: must be an int, got true"),
    ("override max_length", {}, ["max_length=64.9"], "SLConfig.max_length: must be an int, got 64.9."),
    ("override warmup", {}, ["lr_schedule.warmup_steps=1.5"], "SLConfig.lr_schedule.warmup_steps: must be an int"),
]


@pytest.mark.hostile("cli")
@pytest.mark.parametrize(
    ("fields", "overrides", "message"), [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES]
)
def test_the_command_line_refuses_coercions(
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    fields: dict[str, object],
    overrides: list[str],
    message: str,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train_data": str(tmp_path / "d.jsonl"), "run_dir": str(tmp_path / "run"), **fields}))
    assert main(["sl", str(path), *overrides, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _labeled(a: str, b: str, label: str = "a") -> LabeledComparison:
    prompt = Conversation(messages=(Message(role="user", content="q"),))
    comparison = Comparison(
        prompt=prompt,
        completion_a=(Message(role="assistant", content=a),),
        completion_b=(Message(role="assistant", content=b),),
    )
    return LabeledComparison(comparison=comparison, label=label)  # type: ignore[arg-type]


@pytest.mark.hostile("rows")
@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (_labeled("same", "same"), "completion_b"),
        (_labeled("", "b"), "completion_a"),
        (_labeled("a", " "), "completion_b"),
    ],
    ids=["identical records", "empty a record", "blank b record"],
)
def test_dpo_pairs_given_in_code_must_express_a_preference(
    tmp_path: pathlib.Path, bad: LabeledComparison, field: str
) -> None:
    rows = [_labeled("yes", "no"), bad, _labeled("ok", "meh", "b")]
    config = DPOConfig(train_data="<memory>", run_dir=str(tmp_path / "run"), test_fraction=0.0, max_length=64)
    error = _raises_exactly(lambda: prepare_dpo_data(config, ByteRenderer(), train_rows=rows), DataError, field)
    assert error.where == "<memory>[1]"
    skipped = prepare_dpo_data(attrs.evolve(config, bad_rows="skip"), ByteRenderer(), train_rows=rows)
    assert (len(skipped.train), skipped.skipped_rows) == (2, 1)
