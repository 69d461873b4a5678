"""The pure half of evaluations: scorers, records, the config record and row parsing (no model)."""

from __future__ import annotations

import json
import math
import re
import statistics

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinkerflow.chat import Message
from tinkerflow.chat_format import ChatFormatError
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.evals import (
    EvalExample,
    EvalSpec,
    ScoredSample,
    examples_from_rows,
    mean_and_stderr,
    scoring,
    summarize,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


# -- exact match, regex ------------------------------------------------------------------------------------------


@given(st.text(max_size=30), st.text(alphabet=" \t\n", max_size=3), st.text(alphabet=" \t\n", max_size=3))
def test_exact_match_ignores_surrounding_whitespace_and_case(text: str, left: str, right: str) -> None:
    assert scoring.exact_match(f"{left}{text.upper()}{right}", text)[0] == 1.0
    assert scoring.exact_match(f"{left}{text}{right}", text, normalize=False)[0] == 1.0


def test_exact_match_normalization_is_what_the_docs_say() -> None:
    assert scoring.exact_match("Paris.", "paris")[0] == 1.0
    assert scoring.exact_match("New   York", "new york")[0] == 1.0
    assert scoring.exact_match("Paris.", "paris", normalize=False)[0] == 0.0
    assert scoring.exact_match("Pariss", "paris")[0] == 0.0


def test_regex_takes_the_first_group_and_compares_it() -> None:
    pattern = re.compile(r"answer is (\d+)")
    assert scoring.regex_score("so the answer is 42.", pattern, "42") == (1.0, {"matched": 1.0})
    assert scoring.regex_score("so the answer is 41.", pattern, "42") == (0.0, {"matched": 1.0})
    assert scoring.regex_score("no idea", pattern, "42") == (0.0, {"matched": 0.0})
    assert scoring.regex_score("answer is 7", pattern, "")[0] == 1.0  # no reference: a match is enough


# -- JSON ---------------------------------------------------------------------------------------------------------


@given(json_values)
def test_json_score_accepts_any_value_against_itself(value: object) -> None:
    text = json.dumps(value)
    score, details = scoring.json_score(text, text)
    assert score == 1.0
    assert details == {"json_valid": 1.0, "exact": 1.0}


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=2, max_size=5))
def test_json_key_order_does_not_matter(value: dict[str, int]) -> None:
    reordered = dict(reversed(list(value.items())))
    assert scoring.json_score(json.dumps(reordered), json.dumps(value))[0] == 1.0


def test_json_booleans_are_not_numbers() -> None:
    assert not scoring.json_equal(True, 1)
    assert not scoring.json_equal([1.0], [True])
    assert scoring.json_equal({"a": 1}, {"a": 1.0})
    assert scoring.json_score('{"age": true}', '{"age": 1}')[0] == 0.0


def test_json_score_with_a_schema() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert scoring.json_score('{"age": 3}', "", schema) == (1.0, {"json_valid": 1.0, "schema_valid": 1.0})
    assert scoring.json_score('{"age": "3"}', "", schema) == (0.0, {"json_valid": 1.0, "schema_valid": 0.0})
    assert scoring.json_score("age: 3", '{"age": 3}', schema) == (
        0.0, {"json_valid": 0.0, "schema_valid": 0.0, "exact": 0.0},
    )  # fmt: skip
    # valid and matching the schema but another value
    assert scoring.json_score('{"age": 4}', '{"age": 3}', schema)[1] == {
        "json_valid": 1.0, "schema_valid": 1.0, "exact": 0.0,
    }  # fmt: skip


def test_a_reference_that_is_not_json_is_a_data_error() -> None:
    with pytest.raises(ValidationError, match="reference"):
        scoring.json_score("{}", "not json")


# -- math, multiple choice, judge ---------------------------------------------------------------------------------


@given(st.integers(-(10**6), 10**6))
def test_boxed_math_grades_the_last_boxed_answer(value: int) -> None:
    assert scoring.boxed_math_score(f"First \\boxed{{{value + 1}}}, no: \\boxed{{{value}}}", str(value))[0] == 1.0
    assert scoring.boxed_math_score(f"it is {value}", str(value)) == (0.0, {"boxed": 0.0})


@given(
    st.lists(st.floats(-50, 0, allow_nan=False), min_size=2, max_size=6).flatmap(
        lambda sums: st.tuples(st.just(sums), st.lists(st.integers(1, 9), min_size=len(sums), max_size=len(sums)))
    )
)
def test_choose_by_logprob_is_the_argmax_of_the_chosen_normalization(data: tuple[list[float], list[int]]) -> None:
    sums, lengths = np.array(data[0]), np.array(data[1])
    assert scoring.choose_by_logprob(sums, lengths, "sum") == int(np.argmax(sums))
    assert scoring.choose_by_logprob(sums, lengths, "mean") == int(np.argmax(sums / lengths))


def test_a_nan_choice_never_wins() -> None:
    assert scoring.choose_by_logprob(np.array([math.nan, -9.0]), np.array([1, 1])) == 1


verdicts = st.sampled_from(["A", "B", "tie", None])


def _swap(verdict: scoring.Verdict) -> scoring.Verdict:
    return {"A": "B", "B": "A"}.get(verdict, verdict) if verdict is not None else None  # type: ignore[return-value]  # the dict holds Verdicts


@given(verdicts, verdicts)
def test_pairwise_score_is_the_complement_of_the_references_score(
    first: scoring.Verdict, second: scoring.Verdict
) -> None:
    # the reference's points are the model's with every verdict's labels swapped: together they make 1
    mine, _ = scoring.pairwise_score(first, second)
    theirs, _ = scoring.pairwise_score(_swap(first), _swap(second))
    assert mine + theirs == pytest.approx(1.0)
    assert 0.0 <= mine <= 1.0


def test_pairwise_score_examples() -> None:
    assert scoring.pairwise_score("A", "B")[0] == 1.0  # model shown first wins, model shown second wins
    assert scoring.pairwise_score("B", "A")[0] == 0.0
    assert scoring.pairwise_score("A", "A") == (0.5, {"unreadable": 0.0, "consistent": 0.0})  # position bias
    assert scoring.pairwise_score(None, "tie") == (0.5, {"unreadable": 0.5, "consistent": 1.0})


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("A", "A"), ("[[B]]", "B"), ("tie", "tie"), ("Answer B is better", "B"), ("both fine", None), ("AB", None)],
)
def test_parse_verdict(text: str, verdict: scoring.Verdict) -> None:
    assert scoring.parse_verdict(text) == verdict


def test_judge_prompt_shows_both_answers_in_order() -> None:
    system, user = scoring.judge_messages("q?", "first answer", "second answer")
    assert system.role == "system"
    body = user.text()
    assert body.index("first answer") < body.index("second answer")


# -- records ------------------------------------------------------------------------------------------------------


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30))
def test_mean_and_stderr_match_statistics(values: list[float]) -> None:
    mean, stderr = mean_and_stderr(np.array(values))
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-9)
    assert stderr == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)), abs=1e-9)


def test_summarize_averages_sub_scores_over_the_samples_that_report_them() -> None:
    samples = [
        ScoredSample("0", "q", "r", "x", 1.0, {"json_valid": 1.0}),
        ScoredSample("1", "q", "r", "x", 0.0, {"json_valid": 0.0, "exact": 0.0}),
        ScoredSample("2", "q", "r", "x", 1.0, {"json_valid": 1.0}),
    ]
    result = summarize("people", "json_match", samples)
    assert result.n == 3
    assert result.mean == pytest.approx(2 / 3)
    assert result.metrics == {"exact": 0.0, "json_valid": pytest.approx(2 / 3)}
    assert result.as_row()["people/json_match"] == pytest.approx(2 / 3)
    assert set(result.as_row()) == {"people/json_match", "people/stderr", "people/exact", "people/json_valid"}


def test_example_answer_must_index_its_choices() -> None:
    user = (Message(role="user", content="q"),)
    with pytest.raises(ValidationError, match="answer"):
        EvalExample(id="x", messages=user, choices=("a", "b"), answer=2)
    with pytest.raises(ValidationError, match="answer"):
        EvalExample(id="x", messages=user, answer=0)


# -- the config record ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "bad name", "kind": "exact_match"}, "name"),
        ({"name": "x", "kind": "exact"}, "kind"),
        ({"name": "x", "kind": "regex"}, "pattern"),
        ({"name": "x", "kind": "regex", "pattern": "("}, "pattern"),
        ({"name": "x", "kind": "exact_match", "pattern": "a"}, "pattern"),
        ({"name": "x", "kind": "exact_match", "schema": "s.json"}, "schema"),
        ({"name": "x", "kind": "inspect"}, "task"),
        ({"name": "x", "kind": "inspect", "task": "t", "data": "d.jsonl"}, "data"),
        ({"name": "x", "kind": "exact_match", "max_tokens": 0}, "max_tokens"),
        ({"name": "x", "kind": "exact_match", "every": -1}, "every"),
    ],
)
def test_eval_spec_refuses_bad_fields_by_name(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EvalSpec(**fields)  # type: ignore[arg-type]  # deliberately bad values
    assert f".{field}" in str(caught.value) or f" {field}" in str(caught.value)


@given(st.integers(1, 200), st.integers(0, 20), st.one_of(st.none(), st.integers(0, 20)))
def test_due_follows_every_or_the_runs_cadence(step: int, eval_every: int, every: int | None) -> None:
    spec = EvalSpec(name="x", kind="exact_match", every=every)
    cadence = eval_every if every is None else every
    assert spec.due(step, eval_every) == (cadence > 0 and step % cadence == 0)


# -- rows -> examples ----------------------------------------------------------------------------------------------


def _rows(*rows: object) -> list[tuple[str, object]]:
    return [(f"evals.jsonl:{index + 1}", row) for index, row in enumerate(rows)]


def test_rows_take_the_last_assistant_message_as_reference() -> None:
    spec = EvalSpec(name="x", kind="exact_match")
    conversation = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (example,) = examples_from_rows(_rows(conversation), spec)
    assert example.reference == "4"
    assert [message.role for message in example.messages] == ["user"]
    # nll keeps the whole conversation: its last message is what is scored
    (kept,) = examples_from_rows(_rows(conversation), EvalSpec(name="x", kind="nll"))
    assert [message.role for message in kept.messages] == ["user", "assistant"]


def test_rows_with_prompt_reference_choices_and_json_references() -> None:
    spec = EvalSpec(name="x", kind="multiple_choice")
    (example,) = examples_from_rows(_rows({"prompt": "Sky?", "choices": ["red", "blue"], "answer": "blue"}), spec)
    assert example.answer == 1
    (json_example,) = examples_from_rows(
        _rows({"prompt": "p", "reference": {"a": [1, 2]}}), EvalSpec(name="j", kind="json_match")
    )
    assert json.loads(json_example.reference) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "q"}, "reference"),
        ({"nothing": 1}, "messages"),
        ({"prompt": "q", "reference": "r", "choices": ["a"]}, "choices"),
        ({"prompt": "q", "reference": "r", "answer": 1}, "answer"),
        ([1, 2], "row"),
    ],
)
def test_bad_rows_are_named_by_line_and_field(row: object, field: str) -> None:
    with pytest.raises(ChatFormatError) as caught:
        examples_from_rows(_rows({"prompt": "ok", "reference": "r"}, row), EvalSpec(name="x", kind="exact_match"))
    assert "evals.jsonl:2" in str(caught.value)
    assert field in str(caught.value)


def test_duplicate_ids_are_refused() -> None:
    rows = _rows({"id": "a", "prompt": "q", "reference": "r"}, {"id": "a", "prompt": "q", "reference": "r"})
    with pytest.raises(ChatFormatError, match=r"already used at evals\.jsonl:1"):
        examples_from_rows(rows, EvalSpec(name="x", kind="exact_match"))


def test_limit_keeps_the_first_rows() -> None:
    rows = _rows(*({"prompt": f"q{i}", "reference": "r"} for i in range(5)))
    examples = examples_from_rows(rows, EvalSpec(name="x", kind="exact_match", limit=2))
    assert [example.id for example in examples] == ["0", "1"]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_unknown_row_keys_are_refused_by_name(key: str) -> None:
    from tinkerflow.evals.data import ROW_KEYS

    assume(key not in ROW_KEYS)
    row = {"prompt": "q", "reference": "r", key: 1}
    with pytest.raises(ChatFormatError) as caught:
        examples_from_rows(_rows(row), EvalSpec(name="x", kind="exact_match"))
    assert caught.value.field == key


def test_a_misspelled_row_key_gets_the_closest_known_key() -> None:
    with pytest.raises(ChatFormatError, match="did you mean 'reference'"):
        examples_from_rows(_rows({"prompt": "q", "refrence": "r"}), EvalSpec(name="x", kind="regex", pattern="x"))
