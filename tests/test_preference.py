"""Preference records, data layouts and the DPO pure core (tinkerflow.preference)."""

from __future__ import annotations

import functools
import json
import math
import pathlib
import subprocess
import sys
import warnings

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, ToolCall, ToolSpec
from tinkerflow.chat_format import ChatFormatError
from tinkerflow.errors import ConfigError, NonFiniteError, ShapeError, TinkerflowError, ValidationError
from tinkerflow.preference import (
    Comparison,
    DPOMetrics,
    DPOOutput,
    DPOPairs,
    EmptyBatchError,
    Label,
    LabeledComparison,
    PreferenceFormatError,
    TieError,
    comparison_datums,
    detect_layout,
    dpo_loss,
    dpo_pairs,
    dpo_token_gradients,
    labeled_comparison_from_json,
    labeled_comparison_to_json,
    parse_preference_line,
    preference_rows_from_hf,
    sequence_logprobs,
    token_gradients,
)
from tinkerflow.preference import testing as pft
from tinkerflow.preference.data import preference_row_from_hf
from tinkerflow.render import RenderError, build_supervised_example, get_renderer
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.io.data import load_preference_hf, load_preference_jsonl
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.supervised import supervised_datum

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]

USER = Message(role="user", content="What is 2+2?")
PROMPT = Conversation(messages=(USER,))
A = (Message(role="assistant", content="4"),)
B = (Message(role="assistant", content="5, probably"),)
COMPARISON = Comparison(prompt=PROMPT, completion_a=A, completion_b=B)


@functools.cache
def _renderer(name: str = "llama3"):  # type: ignore[no-untyped-def]
    return get_renderer(name, offline_tokenizer("qwen3" if name.startswith("qwen3") else name))


def _user(text: str) -> dict[str, object]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, object]:
    return {"role": "assistant", "content": text}


# -- records: one case per validation rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": [USER]}, "prompt"),
        ({"completion_a": ()}, "completion_a"),
        ({"completion_b": "text"}, "completion_b"),
        ({"completion_a": ("not a message",)}, "completion_a[0]"),
        ({"completion_b": (A[0], Message(role="user", content="again"), A[0])}, "completion_b[1].role"),
        ({"completion_a": (Message(role="system", content="s"),)}, "completion_a[0].role"),
        ({"completion_a": (Message(role="tool", content="r"), A[0])}, "completion_a[0].role"),
        ({"completion_b": (A[0], Message(role="tool", content="r"))}, "completion_b[1].role"),
    ],
)
def test_comparison_rejects_bad_fields_naming_them(kwargs: dict[str, object], field: str) -> None:
    fields = {"prompt": PROMPT, "completion_a": A, "completion_b": B, **kwargs}
    with pytest.raises(ValidationError) as info:
        Comparison(**fields)  # type: ignore[arg-type]
    assert info.value.where == "Comparison"
    assert info.value.field == field


def test_comparison_accepts_tool_results_between_assistant_messages_and_converts_lists() -> None:
    call = ToolCall(name="calc", arguments='{"x": "2+2"}', id="c1")
    completion = [
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", content="4", tool_call_id="c1"),
        Message(role="assistant", content="4"),
    ]
    comparison = Comparison(prompt=PROMPT, completion_a=completion, completion_b=list(B))
    assert comparison.completion_a == tuple(completion)
    assert comparison.conversation("a").messages == (USER, *completion)
    with pytest.raises(ValidationError) as info:
        comparison.completion("c")  # type: ignore[arg-type]
    assert info.value.field == "which"


@pytest.mark.parametrize(("kwargs", "field"), [({"label": "A"}, "label"), ({"comparison": PROMPT}, "comparison")])
def test_labeled_comparison_rejects_bad_fields_naming_them(kwargs: dict[str, object], field: str) -> None:
    fields = {"comparison": COMPARISON, "label": "a", **kwargs}
    with pytest.raises(ValidationError) as info:
        LabeledComparison(**fields)  # type: ignore[arg-type]
    assert (info.value.where, info.value.field) == ("LabeledComparison", field)


def test_chosen_rejected_follows_the_label_and_a_tie_is_a_typed_error() -> None:
    assert LabeledComparison(COMPARISON, "a").chosen_rejected() == (A, B)
    assert LabeledComparison(COMPARISON, "b").chosen_rejected() == (B, A)
    with pytest.raises(TieError) as info:
        LabeledComparison(COMPARISON, "tie").chosen_rejected()
    assert info.value.field == "label"
    assert "drop" in info.value.fix


@given(pft.labeled_comparisons(tools=True))
def test_swapped_is_an_involution_that_keeps_the_preference(labeled: LabeledComparison) -> None:
    swapped = labeled.swapped()
    assert swapped.swapped() == labeled
    assert swapped.comparison.completion_a == labeled.comparison.completion_b
    assert swapped.is_tie == labeled.is_tie
    if not labeled.is_tie:
        assert swapped.chosen_rejected() == labeled.chosen_rejected()


@settings(max_examples=50)
@given(st.one_of(pft.comparisons(tools=True, unparsed=True), pft.labeled_comparisons(tools=True, unparsed=True)))
def test_records_round_trip_through_serde(record: object) -> None:
    text = to_json(record)
    back = from_json(text, type(record))
    assert back == record
    assert to_json(back) == text


def test_serde_rejects_an_invalid_comparison() -> None:
    data = json.loads(to_json(LabeledComparison(COMPARISON, "a")))
    data["comparison"]["completion_a"] = []
    with pytest.raises(TinkerflowError, match="completion_a"):
        from_json(json.dumps(data), LabeledComparison)


# -- data layouts ------------------------------------------------------------------------------------------------


def test_prompt_chosen_rejected_with_texts() -> None:
    labeled = labeled_comparison_from_json({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5, probably"})
    assert labeled == LabeledComparison(COMPARISON, "a")


def test_prompt_chosen_rejected_with_message_lists_and_tools() -> None:
    tool = {"type": "function", "function": {"name": "calc", "description": "math", "parameters": {"type": "object"}}}
    row = {
        "prompt": [{"role": "system", "content": "be brief"}, _user("What is 2+2?")],
        "chosen": [_assistant("4")],
        "rejected": [_assistant("5, probably")],
        "tools": [tool],
        "score_chosen": 9.0,  # a dataset's extra column: left out of an HF row, refused in a JSONL row
    }
    with pytest.raises(PreferenceFormatError, match=r"row\.score_chosen: is not a known key") as refused:
        labeled_comparison_from_json(row)
    assert refused.value.field == "score_chosen"
    labeled = preference_row_from_hf(row, "hf[0]")
    assert labeled.comparison.prompt.messages[0] == Message(role="system", content="be brief")
    assert labeled.comparison.prompt.tools == (ToolSpec.create("calc", "math", {"type": "object"}),)
    assert labeled.chosen_rejected() == (A, B)


def test_prompt_chosen_rejected_strips_a_repeated_prompt() -> None:
    # allenai/llama-3.1-tulu-3-8b-preference-mixture: prompt text, chosen/rejected as full conversations
    row = {
        "prompt": "What is 2+2?",
        "chosen": [_user("What is 2+2?"), _assistant("4")],
        "rejected": [_user("What is 2+2?"), _assistant("5, probably")],
    }
    assert labeled_comparison_from_json(row) == LabeledComparison(COMPARISON, "a")


def test_chosen_rejected_splits_at_the_longest_common_prefix() -> None:
    shared = [{"role": "system", "content": "s"}, _user("hi"), _assistant("hello"), _user("What is 2+2?")]
    row = {
        "chosen": [*shared, _assistant("4")],
        "rejected": [*shared, _assistant("thinking..."), _assistant("5, probably")],
    }
    labeled = labeled_comparison_from_json(row)
    assert len(labeled.comparison.prompt.messages) == 4
    assert labeled.comparison.completion_a == A
    assert labeled.comparison.completion_b == (Message(role="assistant", content="thinking..."), B[0])
    assert labeled.label == "a"
    assert detect_layout(row) == "chosen_rejected"


def test_ab_label_layout_and_label_spellings() -> None:
    row = {"prompt": "What is 2+2?", "completion_a": "4", "completion_b": [_assistant("5, probably")]}
    spellings: list[tuple[str, Label]] = [("a", "a"), ("B", "b"), ("Tie", "tie"), ("tie", "tie")]
    for label, expected in spellings:
        assert labeled_comparison_from_json({**row, "label": label}) == LabeledComparison(COMPARISON, expected)


def test_cookbook_layout() -> None:
    row = {
        "comparison": {
            "prompt_conversation": [_user("What is 2+2?")],
            "completion_A": [_assistant("4")],
            "completion_B": [_assistant("5, probably")],
        },
        "label": "B",
    }
    assert labeled_comparison_from_json(row) == LabeledComparison(COMPARISON, "b")


@given(pft.labeled_comparisons(tools=True))
def test_to_json_and_back_is_exact(labeled: LabeledComparison) -> None:
    row = json.loads(json.dumps(labeled_comparison_to_json(labeled)))
    comparison = labeled.comparison
    empty = [
        name
        for name, completion in (("completion_a", comparison.completion_a), ("completion_b", comparison.completion_b))
        if not any(m.text().strip() or (m.thinking() or "").strip() or m.images() or m.tool_calls for m in completion)
    ]
    if empty:  # a row expresses no preference with an empty completion: reading refuses it, naming the side
        with pytest.raises(PreferenceFormatError) as info:
            labeled_comparison_from_json(row)
        assert info.value.field == empty[0]
    elif comparison.completion_a == comparison.completion_b:  # nor with two identical ones
        with pytest.raises(PreferenceFormatError) as info:
            labeled_comparison_from_json(row)
        assert info.value.field == "completion_b"
    else:
        assert labeled_comparison_from_json(row) == labeled


BAD_ROWS = [
    ("[1, 2]", "row"),
    ('{"question": "x", "answer": "y"}', "row"),
    ('{"prompt": "p", "chosen": "x"}', "rejected"),
    ('{"prompt": "p", "chosen": 3, "rejected": "y"}', "chosen"),
    ('{"prompt": [], "chosen": "x", "rejected": "y"}', "prompt"),
    ('{"prompt": [{"role": "boss", "content": "x"}], "chosen": "x", "rejected": "y"}', "prompt[0].role"),
    ('{"prompt": "p", "chosen": [{"role": "assistant", "content": 5}], "rejected": "y"}', "chosen[0].content"),
    ('{"prompt": "p", "chosen": "x", "rejected": [{"role": "user", "content": "q"}]}', "rejected[0].role"),
    (
        '{"prompt": "p", "chosen": "x", "rejected": [{"role": "assistant", "content": "a"}, {"role": "tool", '
        '"content": "r"}]}',
        "rejected[1].role",
    ),
    ('{"chosen": "x", "rejected": "y"}', "chosen"),
    ('{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}', "rejected[0]"),
    (
        '{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "a"}, '
        '{"role": "assistant", "content": "b"}]}',
        "chosen",
    ),
    (
        '{"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", '
        '"content": "c"}], "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "d"}]}',
        "chosen[2].role",
    ),
    ('{"prompt": "p", "completion_a": "x", "completion_b": "y", "label": "C"}', "label"),
    ('{"prompt": "p", "completion_a": "x", "completion_b": "y"}', "label"),
    ('{"prompt": "p", "completion_a": "x", "label": "a"}', "completion_b"),
    ('{"comparison": [], "label": "A"}', "comparison"),
    ('{"comparison": {"prompt_conversation": "p", "completion_A": "x"}, "label": "A"}', "comparison.completion_B"),
    (
        '{"comparison": {"prompt_conversation": "p", "completion_A": "x", "completion_B": [{"role": "system", '
        '"content": "s"}]}, "label": "A"}',
        "comparison.completion_B[0].role",
    ),
    ('{"prompt": "p", "chosen": "x", "rejected": "y"', "line"),
]


@pytest.mark.parametrize(("line", "field"), BAD_ROWS)
def test_bad_rows_name_the_source_and_the_field(line: str, field: str) -> None:
    with pytest.raises(PreferenceFormatError) as info:
        parse_preference_line(line, "prefs.jsonl:7")
    assert isinstance(info.value, ChatFormatError)  # caught by the same handlers as supervised data
    assert (info.value.where, info.value.field) == ("prefs.jsonl:7", field)
    assert str(info.value).startswith(f"prefs.jsonl:7.{field}: ")


def test_invalid_utf8_is_a_bad_row() -> None:
    with pytest.raises(PreferenceFormatError) as info:
        parse_preference_line(b'{"prompt": "\xff"}', "f:1")
    assert info.value.field == "line"


def test_forcing_a_layout() -> None:
    row = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5, probably"}
    with pytest.raises(PreferenceFormatError) as info:
        labeled_comparison_from_json(row, layout="ab_label")
    assert info.value.field == "chosen"  # not a key of the forced layout
    with pytest.raises(PreferenceFormatError) as missing:
        labeled_comparison_from_json({"prompt": "What is 2+2?", "completion_b": "4"}, layout="ab_label")
    assert missing.value.field == "completion_a"
    with pytest.raises(ConfigError):
        labeled_comparison_from_json(row, layout="other")  # type: ignore[arg-type]


def _write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_preference_jsonl_raises_at_file_and_line_or_skips_and_counts(tmp_path: pathlib.Path) -> None:
    good = json.dumps({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5, probably"})
    tie = json.dumps({"prompt": "What is 2+2?", "completion_a": "4", "completion_b": "5, probably", "label": "tie"})
    bad = json.dumps({"prompt": "p", "chosen": [_user("x")], "rejected": "y"})
    path = _write(tmp_path / "prefs.jsonl", [good, "", "  ", bad, tie, "{not json", good])
    with pytest.raises(PreferenceFormatError) as info:
        load_preference_jsonl(path)
    assert (info.value.where, info.value.field) == (f"{path}:4", "chosen[0].role")
    labeled, skipped = load_preference_jsonl(path, policy="skip")
    assert skipped == 2
    assert [item.label for item in labeled] == ["a", "tie", "a"]  # ties are data: kept
    with pytest.raises(ConfigError):
        load_preference_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError):
        load_preference_jsonl(path, policy="ignore")  # type: ignore[arg-type]


HF_ROWS: list[dict[str, object]] = [
    {
        "prompt": "What is 2+2?",
        "chosen": [_user("What is 2+2?"), _assistant("4")],
        "rejected": [_user("What is 2+2?"), _assistant("5, probably")],
        "score_chosen": 9.0,
    },
    {
        "prompt": "Name a colour.",
        "chosen": [_user("Name a colour."), {"role": "assistant", "content": "Blue.", "name": "bot"}],
        "rejected": [_user("Name a colour."), _assistant("Seven.")],
        "score_chosen": 7.5,
    },
]


def test_rows_from_an_in_memory_hf_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(HF_ROWS)
    assert dataset[0]["chosen"][0]["name"] is None  # Arrow fills missing keys with None
    labeled, skipped = preference_rows_from_hf(dataset)
    assert skipped == 0
    assert labeled[0] == LabeledComparison(COMPARISON, "a")
    assert labeled[1].comparison.completion_a == (Message(role="assistant", content="Blue.", name="bot"),)
    broken = datasets.Dataset.from_list([*HF_ROWS, {**HF_ROWS[0], "rejected": [_assistant("x"), _user("y")]}])
    with pytest.raises(PreferenceFormatError) as info:
        preference_rows_from_hf(broken, source="mine")
    assert (info.value.where, info.value.field) == ("mine[2]", "rejected[1].role")
    assert preference_rows_from_hf(broken, policy="skip")[1] == 1


def test_load_preference_hf_reads_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[str, str, dict[str, object]]] = []

    def fake_load_dataset(name: str, split: str, **kwargs: object) -> object:
        calls.append((name, split, kwargs))
        return datasets.Dataset.from_list(HF_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    labeled, skipped = load_preference_hf("org/prefs", "train", revision="main")
    assert calls == [("org/prefs", "train", {"revision": "main"})]
    assert (len(labeled), skipped) == (2, 0)


def test_load_preference_hf_without_datasets_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ConfigError, match=r"pip install 'tinkerflow\[hf\]'"):
        load_preference_hf("org/prefs", "train")


def test_import_is_light() -> None:
    code = "import sys, json, tinkerflow.preference; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = {name.split(".")[0] for name in json.loads(output.strip().splitlines()[-1])}
    assert not loaded & {"torch", "datasets", "transformers", "tokenizers", "hypothesis", "tinker"}


# -- sequence logprobs -----------------------------------------------------------------------------------------------

ragged = st.lists(st.integers(0, 12), min_size=1, max_size=6).flatmap(
    lambda lengths: st.tuples(
        *(
            st.tuples(
                st.lists(st.floats(-30, 0), min_size=n, max_size=n),
                st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=n, max_size=n),
            )
            for n in lengths
        )
    )
)


@given(ragged)
def test_sequence_logprobs_are_weighted_sums(sequences: tuple[tuple[list[float], list[float]], ...]) -> None:
    logprobs = [np.asarray(lp, dtype=np.float32) for lp, _ in sequences]
    weights = [np.asarray(w, dtype=np.float32) for _, w in sequences]
    result = sequence_logprobs(logprobs, weights)
    assert result.dtype == np.float64
    expected = [
        float(np.dot(lp.astype(np.float64), w.astype(np.float64))) for lp, w in zip(logprobs, weights, strict=True)
    ]
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)


def test_sequence_logprobs_with_empty_sequences_anywhere() -> None:
    logprobs = [[], [-1.0], [], [-2.0, -3.0], [], []]
    weights = [[], [1.0], [], [1.0, 0.5], [], []]
    assert sequence_logprobs(logprobs, weights).tolist() == [0.0, -1.0, 0.0, -3.5, 0.0, 0.0]
    assert sequence_logprobs([[], []], [[], []]).tolist() == [0.0, 0.0]
    assert [g.tolist() for g in token_gradients([1.0, 2.0, 3.0], [[], [1.0, 0.0], []])] == [[], [2.0, 0.0], []]


def test_sequence_logprobs_errors() -> None:
    with pytest.raises(ShapeError) as info:
        sequence_logprobs([[-1.0, -2.0], [-1.0]], [[1, 1], [1, 1]])
    assert info.value.field == "weights_D[1]"
    with pytest.raises(ShapeError) as info:
        sequence_logprobs([[-1.0]], [[1], [1]])
    assert info.value.field == "weights_D"
    with pytest.raises(EmptyBatchError):
        sequence_logprobs([], [])
    with pytest.raises(NonFiniteError) as nonfinite:
        sequence_logprobs([[-1.0, math.nan]], [[1, 1]])
    assert nonfinite.value.field == "logprobs_D[0]"
    with pytest.raises(ShapeError):
        sequence_logprobs([[[-1.0]]], [[[1.0]]])


# -- the DPO loss ------------------------------------------------------------------------------------------------


def _naive_loss(pc: np.ndarray, pr: np.ndarray, rc: np.ndarray, rr: np.ndarray, beta: float) -> float:
    z = beta * ((pc - rc) - (pr - rr))
    return float(np.mean(-np.log(1.0 / (1.0 + np.exp(-z)))))


@given(pft.dpo_batches())
def test_loss_matches_the_formula_and_is_non_negative(batch: Batch) -> None:
    pc, pr, rc, rr, beta = batch
    out = dpo_loss(pc, pr, rc, rr, beta)
    assert out.loss >= 0.0
    assert out.loss == out.metrics.dpo_loss
    assert math.isclose(out.loss, _naive_loss(pc, pr, rc, rr, beta), rel_tol=1e-9, abs_tol=1e-12)
    assert np.all(out.dloss_dchosen_B <= 0.0)
    assert np.array_equal(out.dloss_drejected_B, -out.dloss_dchosen_B)
    assert float(np.abs(out.dloss_dchosen_B).sum()) <= beta * (1 + 1e-12)
    margins = beta * ((pc - rc) - (pr - rr))
    assert math.isclose(out.metrics.margin, float(margins.mean()), rel_tol=1e-9, abs_tol=1e-9)
    assert out.metrics.accuracy == float(np.mean((pc - rc) > (pr - rr)))


@given(pft.dpo_batches())
def test_swapping_chosen_and_rejected_flips_the_margin(batch: Batch) -> None:
    pc, pr, rc, rr, beta = batch
    out = dpo_loss(pc, pr, rc, rr, beta).metrics
    swapped = dpo_loss(pr, pc, rr, rc, beta).metrics
    assert swapped.margin == pytest.approx(-out.margin, rel=1e-12, abs=1e-12)
    assert (swapped.chosen_reward, swapped.rejected_reward) == (out.rejected_reward, out.chosen_reward)
    equal = float(np.mean((pc - rc) == (pr - rr)))
    assert swapped.accuracy == pytest.approx(1.0 - out.accuracy - equal)
    # softplus(z) - softplus(-z) = z, so the two losses differ by exactly the margin
    assert swapped.dpo_loss - out.dpo_loss == pytest.approx(out.margin, rel=1e-9, abs=1e-9)


@given(pft.dpo_batches(scale=1e3))
def test_beta_to_zero_gives_log_two(batch: Batch) -> None:
    pc, pr, rc, rr, _ = batch
    out = dpo_loss(pc, pr, rc, rr, 1e-12)
    assert out.loss == pytest.approx(math.log(2.0), abs=1e-9)
    np.testing.assert_allclose(out.dloss_dchosen_B, -0.5e-12 / len(pc), rtol=1e-6)


@given(pft.dpo_batches(max_pairs=4, scale=20.0))
def test_gradient_equals_finite_differences(batch: Batch) -> None:
    pc, pr, rc, rr, beta = batch
    out = dpo_loss(pc, pr, rc, rr, beta)
    step = 1e-5
    for index in range(len(pc)):
        for values, gradient in ((pc, out.dloss_dchosen_B), (pr, out.dloss_drejected_B)):
            plus, minus = values.copy(), values.copy()
            plus[index] += step
            minus[index] -= step
            chosen_side = values is pc
            up = dpo_loss(plus, pr, rc, rr, beta) if chosen_side else dpo_loss(pc, plus, rc, rr, beta)
            down = dpo_loss(minus, pr, rc, rr, beta) if chosen_side else dpo_loss(pc, minus, rc, rr, beta)
            numeric = (up.loss - down.loss) / (2 * step)
            assert numeric == pytest.approx(gradient[index], rel=1e-5, abs=1e-9)


@given(st.floats(1e3, 1e12), st.floats(0.1, 10.0), st.integers(1, 5))
def test_numerically_stable_for_large_margins(size: float, beta: float, pairs: int) -> None:
    ones = np.ones(pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings
        winning = dpo_loss(ones * size, -ones * size, 0 * ones, 0 * ones, beta)
        losing = dpo_loss(-ones * size, ones * size, 0 * ones, 0 * ones, beta)
    tail = math.exp(-2 * beta * size)  # softplus(-z) = sigmoid(-z) = e^-z to double precision (0 once it underflows)
    assert winning.loss == pytest.approx(tail, rel=1e-9, abs=1e-320)
    np.testing.assert_allclose(winning.dloss_dchosen_B, -beta * tail / pairs, rtol=1e-9, atol=1e-320)
    assert losing.loss == pytest.approx(2 * beta * size, rel=1e-12)
    np.testing.assert_allclose(losing.dloss_dchosen_B, -beta / pairs, rtol=1e-12)
    assert (winning.metrics.accuracy, losing.metrics.accuracy) == (1.0, 0.0)


@given(pft.dpo_batches(), st.floats(-100, 100))
def test_a_shared_shift_of_policy_and_reference_changes_nothing(batch: Batch, shift: float) -> None:
    pc, pr, rc, rr, beta = batch
    out = dpo_loss(pc, pr, rc, rr, beta)
    moved = dpo_loss(pc + shift, pr, rc + shift, rr, beta)
    assert moved.loss == pytest.approx(out.loss, rel=1e-9, abs=1e-9)


def test_dpo_loss_errors() -> None:
    one = np.array([-1.0])
    with pytest.raises(EmptyBatchError):
        dpo_loss([], [], [], [], 0.1)
    with pytest.raises(ShapeError) as info:
        dpo_loss(one, one, one, np.array([-1.0, -2.0]), 0.1)
    assert info.value.field == "ref_rejected_B"
    with pytest.raises(ShapeError) as info:
        dpo_loss(one[None], one, one, one, 0.1)
    assert info.value.field == "policy_chosen_B"
    for beta in (0.0, -0.1, math.inf):
        with pytest.raises(ValidationError) as invalid:
            dpo_loss(one, one, one, one, beta)
        assert invalid.value.field == "beta"
    with pytest.raises(NonFiniteError) as nonfinite:
        dpo_loss(one, [math.nan], one, one, 0.1)
    assert nonfinite.value.field == "policy_rejected_B"
    with pytest.raises(NonFiniteError):
        dpo_loss([1e308], [-1e308], [0.0], [0.0], 10.0)


def test_output_records_validate_and_round_trip() -> None:
    out = dpo_loss([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.0], [-2.0, -2.0], 0.1)
    assert from_json(to_json(out), DPOOutput) == out
    assert from_json(to_json(out.metrics), DPOMetrics) == out.metrics
    assert set(out.metrics.as_dict()) == {"dpo_loss", "accuracy", "margin", "chosen_reward", "rejected_reward"}
    assert out.num_pairs == 2
    with pytest.raises(ShapeError):
        attrs.evolve(out, dloss_drejected_B=np.zeros(3))
    with pytest.raises(EmptyBatchError):
        attrs.evolve(out, dloss_dchosen_B=np.zeros(0), dloss_drejected_B=np.zeros(0))
    with pytest.raises(ValidationError) as info:
        attrs.evolve(out.metrics, accuracy=1.5)
    assert info.value.field == "accuracy"


# -- token gradients -----------------------------------------------------------------------------------------------


@settings(max_examples=50)
@given(ragged.filter(lambda seqs: len(seqs) % 2 == 0), st.floats(0.05, 1.0))
def test_token_gradients_are_the_chain_rule_through_the_weighted_sum(
    sequences: tuple[tuple[list[float], list[float]], ...], beta: float
) -> None:
    logprobs = [np.asarray(lp, dtype=np.float64) for lp, _ in sequences]
    weights = [np.asarray(w, dtype=np.float64) for _, w in sequences]
    chosen_lp, rejected_lp = logprobs[0::2], logprobs[1::2]
    chosen_w, rejected_w = weights[0::2], weights[1::2]
    ref_c = sequence_logprobs(chosen_lp, chosen_w) + 0.5
    ref_r = sequence_logprobs(rejected_lp, rejected_w) - 0.25

    def loss(c: list[np.ndarray], r: list[np.ndarray]) -> float:
        return dpo_loss(sequence_logprobs(c, chosen_w), sequence_logprobs(r, rejected_w), ref_c, ref_r, beta).loss

    out = dpo_loss(
        sequence_logprobs(chosen_lp, chosen_w), sequence_logprobs(rejected_lp, rejected_w), ref_c, ref_r, beta
    )
    grads_c, grads_r = dpo_token_gradients(out, chosen_w, rejected_w)
    for grads, side, weight_side, gradient in (
        (grads_c, chosen_lp, chosen_w, out.dloss_dchosen_B),
        (grads_r, rejected_lp, rejected_w, out.dloss_drejected_B),
    ):
        for index, (token_grad, w) in enumerate(zip(grads, weight_side, strict=True)):
            np.testing.assert_array_equal(token_grad, gradient[index] * w)
            for t in range(len(w)):
                plus = [a.copy() for a in side]
                minus = [a.copy() for a in side]
                plus[index][t] += 1e-5
                minus[index][t] -= 1e-5
                if side is chosen_lp:
                    numeric = (loss(plus, rejected_lp) - loss(minus, rejected_lp)) / 2e-5
                else:
                    numeric = (loss(chosen_lp, plus) - loss(chosen_lp, minus)) / 2e-5
                assert numeric == pytest.approx(token_grad[t], rel=1e-5, abs=1e-9)


def test_token_gradient_errors() -> None:
    out = dpo_loss([-1.0], [-2.0], [-1.0], [-1.0], 0.1)
    with pytest.raises(ShapeError) as info:
        dpo_token_gradients(out, [np.ones(2), np.ones(2)], [np.ones(2)])
    assert info.value.field == "chosen_weights_B"
    with pytest.raises(EmptyBatchError):
        token_gradients(np.zeros(0), [])
    with pytest.raises(ShapeError):
        token_gradients(np.zeros(2), [np.ones(1)])
    assert [g.tolist() for g in token_gradients([2.0, -1.0], [[1, 0], []])] == [[2.0, 0.0], []]


# -- DPO datums ------------------------------------------------------------------------------------------------


def _cookbook_style_datum(
    conversation: Conversation, train_on: str, max_length: int | None = None, renderer: str = "llama3"
) -> object:
    example = build_supervised_example(_renderer(renderer), conversation, train_on)  # type: ignore[arg-type]
    return supervised_datum(example.model_input, example.weights_T, max_length=max_length, reduction="none")


def test_comparison_datums_render_prompt_plus_each_completion_with_raw_weights() -> None:
    chosen, rejected = comparison_datums(LabeledComparison(COMPARISON, "b"), _renderer(), max_length=64)
    assert chosen == _cookbook_style_datum(COMPARISON.conversation("b"), "last_assistant_message", 64)
    assert rejected == _cookbook_style_datum(COMPARISON.conversation("a"), "last_assistant_message", 64)
    assert chosen.weights_T is not None
    assert set(chosen.weights_T.tolist()) == {0.0, 1.0}  # reduction "none": a token sum
    with pytest.raises(TieError):
        comparison_datums(LabeledComparison(COMPARISON, "tie"), _renderer())


def test_multi_message_completions_weight_every_assistant_message() -> None:
    call = ToolCall(name="calc", arguments='{"x": "2+2"}', id="c1")
    completion = (
        Message(role="assistant", content="Let me compute.", tool_calls=(call,)),
        Message(role="tool", content="4", tool_call_id="c1"),
        Message(role="assistant", content="It is 4."),
    )
    labeled = LabeledComparison(Comparison(prompt=PROMPT, completion_a=completion, completion_b=B), "a")
    chosen, rejected = comparison_datums(labeled, _renderer("qwen3"))
    assert chosen == _cookbook_style_datum(labeled.comparison.conversation("a"), "last_assistant_turn", None, "qwen3")
    only_last = _cookbook_style_datum(labeled.comparison.conversation("a"), "last_assistant_message", None, "qwen3")
    assert chosen.weights_T is not None
    assert only_last.weights_T is not None  # type: ignore[attr-defined]
    assert chosen.weights_T.sum() > only_last.weights_T.sum()  # type: ignore[attr-defined]
    assert rejected == _cookbook_style_datum(labeled.comparison.conversation("b"), "last_assistant_turn", None, "qwen3")
    with pytest.raises(ValidationError) as info:
        comparison_datums(labeled, _renderer("qwen3"), train_on="last_assistant_message")
    assert info.value.field == "train_on"


def test_last_assistant_turn_refuses_a_prompt_ending_in_assistant_messages() -> None:
    prompt = Conversation(messages=(USER, Message(role="assistant", content="Hmm.")))
    long = (Message(role="assistant", content="4"), Message(role="assistant", content="Sure."))
    labeled = LabeledComparison(Comparison(prompt=prompt, completion_a=long, completion_b=B), "a")
    with pytest.raises(ValidationError) as info:
        comparison_datums(labeled, _renderer())
    assert info.value.field == "train_on"
    one = LabeledComparison(Comparison(prompt=prompt, completion_a=A, completion_b=B), "a")
    chosen, _ = comparison_datums(one, _renderer())  # auto -> last_assistant_message: fine
    assert chosen == _cookbook_style_datum(one.comparison.conversation("a"), "last_assistant_message")
    with pytest.raises(ConfigError):
        comparison_datums(one, _renderer(), train_on="everything")  # type: ignore[arg-type]


def test_dpo_pairs_ties_are_a_typed_choice() -> None:
    items = [
        LabeledComparison(COMPARISON, "a"),
        LabeledComparison(COMPARISON, "tie"),
        LabeledComparison(COMPARISON, "b"),
    ]
    with pytest.raises(TieError):
        dpo_pairs(items, _renderer())
    pairs = dpo_pairs(items, _renderer(), ties="drop")
    assert (len(pairs), pairs.indices, pairs.dropped_ties) == (2, (0, 2), 1)
    assert pairs.chosen[0] == pairs.rejected[1]
    assert pairs.interleaved() == (pairs.chosen[0], pairs.rejected[0], pairs.chosen[1], pairs.rejected[1])
    assert from_json(to_json(pairs), DPOPairs) == pairs
    only_ties = dpo_pairs(items[1:2], _renderer(), ties="drop")
    assert (len(only_ties), only_ties.dropped_ties) == (0, 1)
    with pytest.raises(EmptyBatchError):
        dpo_pairs([], _renderer())
    with pytest.raises(ConfigError):
        dpo_pairs(items, _renderer(), ties="keep")  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        DPOPairs(chosen=pairs.chosen, rejected=pairs.rejected[:1], indices=pairs.indices)


def test_dpo_pairs_errors_name_the_comparison_and_side() -> None:
    good = LabeledComparison(COMPARISON, "a")
    with pytest.raises(TieError) as tie:
        dpo_pairs([good, LabeledComparison(COMPARISON, "tie")], _renderer())
    assert (tie.value.where, tie.value.field) == ("dpo_pairs", "labeled[1].label")
    call = ToolCall(name="calc", arguments="{}", id="c1")
    with_call = Comparison(prompt=PROMPT, completion_a=A, completion_b=(Message(role="assistant", tool_calls=(call,)),))
    with pytest.raises(RenderError) as render_error:  # llama3 has no tool-call format
        dpo_pairs([good, LabeledComparison(with_call, "a")], _renderer())
    assert render_error.value.field == "labeled[1].rejected.messages[1].tool_calls"
    with pytest.raises(ValidationError) as too_short:  # max_length below supervised_datum's minimum of 2
        dpo_pairs([good, good], _renderer(), max_length=1)
    assert too_short.value.field == "labeled[0].chosen.max_length"
    with pytest.raises(RenderError) as single:
        comparison_datums(LabeledComparison(with_call, "b"), _renderer())
    assert single.value.field == "labeled.chosen.messages[1].tool_calls"


@settings(max_examples=25, deadline=None)
@given(st.lists(pft.labeled_comparisons(ties=False, parts=False, max_prompt_messages=3), min_size=1, max_size=4))
def test_dpo_pairs_equal_one_comparison_at_a_time(labeled: list[LabeledComparison]) -> None:
    pairs = dpo_pairs(labeled, _renderer())
    for index, item in enumerate(labeled):
        assert (pairs.chosen[index], pairs.rejected[index]) == comparison_datums(item, _renderer())
