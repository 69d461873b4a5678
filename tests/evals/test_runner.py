"""The sampling runner of evaluations: each kind with a scripted sampler (known answers and logprobs, so the
grades are known), and with the tiny local model (determinism, concurrency, transcripts)."""

from __future__ import annotations

import json
import pathlib
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.byte_renderer import EOT, ByteRenderer
from tests.fakes import StubSampler
from tests.helpers import write_jsonl

from tinkerflow.chat import Message
from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalExample, EvalSpec
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.shell.backends.protocol import APIFuture
from tinkerflow.shell.evals.runner import Judge, evaluate, load_examples, load_schema, write_transcript

RENDERER = ByteRenderer()


def _last_user(prompt: ModelInput) -> str:
    """The text of the last ``user: ...`` turn of a ByteRenderer prompt."""
    text = RENDERER.tokenizer.decode(prompt.to_tokens())
    return text.rsplit("user: ", 1)[-1].split("assistant: ", 1)[0]


class ScriptedSampler(StubSampler):
    """Answers each prompt with ``answers[last user text]`` followed by the end-of-turn token; logprobs of a token
    are ``-(id % 7) - 0.5``. Records every request, and at most how many were in flight (unanswered) at once."""

    base_model = "scripted"

    def __init__(self, answers: dict[str, str], hold: int = 0) -> None:
        self.answers = answers
        self.requests: list[tuple[str, SamplingParams]] = []
        self.logprob_requests = 0
        self.hold = hold
        self.pending: list[tuple[object, SampleResponse]] = []
        self.max_in_flight = 0
        self.lock = threading.Lock()

    def respond(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams
    ) -> APIFuture[SampleResponse]:
        question = _last_user(prompt)
        self.requests.append((question, sampling_params))
        tokens = [*RENDERER.tokenizer.encode(self.answers.get(question, "?")), EOT]
        response = SampleResponse(sequences=(SampledSequence(tokens, "stop"),) * num_samples)
        return APIFuture.completed(response)

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        self.logprob_requests += 1
        tokens = prompt.to_tokens()
        values = -(tokens % 7).astype(np.float32) - 0.5
        values[0] = np.nan
        return APIFuture.completed(values)


def _user(text: str) -> tuple[Message, ...]:
    return (Message(role="user", content=text),)


def _examples(references: dict[str, str]) -> list[EvalExample]:
    return [EvalExample(id=str(i), messages=_user(q), reference=r) for i, (q, r) in enumerate(references.items())]


def test_exact_match_grades_each_answer() -> None:
    references = {"capital of France?": "Paris", "2+2?": "4", "sky?": "blue"}
    sampler = ScriptedSampler({"capital of France?": "paris.", "2+2?": "5", "sky?": "Blue"})
    run = evaluate(EvalSpec(name="em", kind="exact_match", max_tokens=9), _examples(references), sampler, RENDERER)
    assert [sample.score for sample in run.samples] == [1.0, 0.0, 1.0]
    assert run.result.mean == pytest.approx(2 / 3)
    assert [sample.response for sample in run.samples] == ["paris.", "5", "Blue"]
    # every request: the spec's max_tokens and temperature, the renderer's stops, the one seed
    params = {params for _, params in sampler.requests}
    assert params == {SamplingParams(max_tokens=9, temperature=0.0, stop_tokens=(EOT,), seed=0)}


def test_json_match_with_a_schema_and_data_read_from_files(tmp_path: pathlib.Path) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    rows = [
        {"id": "a", "prompt": "p1", "reference": {"age": 3}},
        {"id": "b", "messages": [{"role": "user", "content": "p2"}, {"role": "assistant", "content": '{"age": 4}'}]},
        {"id": "c", "prompt": "p3", "reference": {"age": 5}},
    ]
    spec = EvalSpec(
        name="j", kind="json_match", data=str(write_jsonl(tmp_path / "e.jsonl", rows)), schema="schema.json"
    )
    sampler = ScriptedSampler({"p1": '{"age": 3}', "p2": '{"age": "4"}', "p3": "age 5"})
    run = evaluate(spec, load_examples(spec), sampler, RENDERER, schema=load_schema(spec, tmp_path))
    assert [s.score for s in run.samples] == [1.0, 0.0, 0.0]
    assert [s.details for s in run.samples] == [
        {"json_valid": 1.0, "schema_valid": 1.0, "exact": 1.0},
        {"json_valid": 1.0, "schema_valid": 0.0, "exact": 0.0},
        {"json_valid": 0.0, "schema_valid": 0.0, "exact": 0.0},
    ]
    assert run.result.metrics == pytest.approx({"json_valid": 2 / 3, "schema_valid": 1 / 3, "exact": 1 / 3})


def test_a_schema_that_is_not_a_schema_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"type": 12}))
    with pytest.raises(ConfigError, match="schema"):
        load_schema(EvalSpec(name="j", kind="json_match", schema=str(tmp_path / "bad.json")))


def test_multiple_choice_sums_the_logprobs_of_each_choices_own_tokens() -> None:
    choices = ("aaa", "b", "cg")
    examples = [EvalExample(id=str(i), messages=_user(f"q{i}"), choices=choices, answer=i) for i in range(3)]
    sampler = ScriptedSampler({})
    run = evaluate(EvalSpec(name="mc", kind="multiple_choice"), examples, sampler, RENDERER)
    # the scripted logprob of token t is -(t % 7) - 0.5: the expected pick, computed independently
    totals = [sum(-(byte % 7) - 0.5 for byte in choice.encode()) for choice in choices]
    best = choices[int(np.argmax(totals))]
    assert {sample.response for sample in run.samples} == {best}
    assert [sample.score for sample in run.samples] == [float(choice == best) for choice in choices]
    assert sampler.logprob_requests == 9
    assert not sampler.requests  # no sampling
    per_token = evaluate(EvalSpec(name="mc", kind="multiple_choice", choice_norm="mean"), examples, sampler, RENDERER)
    mean_best = choices[int(np.argmax([total / len(c) for total, c in zip(totals, choices, strict=True)]))]
    assert {sample.response for sample in per_token.samples} == {mean_best}


def test_nll_weights_the_last_assistant_message() -> None:
    conversation = (Message(role="user", content="hi"), Message(role="assistant", content="yo"))
    run = evaluate(
        EvalSpec(name="n", kind="nll"), [EvalExample(id="0", messages=conversation)], ScriptedSampler({}), RENDERER
    )
    # ByteRenderer: the message's output is its text and the end-of-turn token (the "assistant: " header is not)
    scored = [*b"yo", EOT]
    expected = float(np.mean([(token % 7) + 0.5 for token in scored]))
    assert run.result.mean == pytest.approx(expected)
    assert run.samples[0].details == {"tokens": float(len(scored))}


def test_judge_counts_wins_over_both_orders() -> None:
    examples = _examples({"q": "reference answer"})
    policy = ScriptedSampler({"q": "my answer"})

    class Fair(StubSampler):  # prefers whichever answer is "my answer", in either position
        def respond(self, prompt: ModelInput, num_samples: int, params: SamplingParams) -> APIFuture[SampleResponse]:
            text = RENDERER.tokenizer.decode(prompt.to_tokens())
            winner = "A" if "Answer A:\nmy answer" in text else "B"
            return APIFuture.completed(SampleResponse(sequences=(SampledSequence([*winner.encode(), EOT], "stop"),)))

    class AlwaysA(StubSampler):
        def respond(self, prompt: ModelInput, num_samples: int, params: SamplingParams) -> APIFuture[SampleResponse]:
            return APIFuture.completed(SampleResponse(sequences=(SampledSequence([*b"A", EOT], "stop"),)))

    spec = EvalSpec(name="win", kind="judge")
    fair = evaluate(spec, examples, policy, RENDERER, judge=Judge(Fair(), RENDERER))
    assert fair.result.mean == 1.0
    assert fair.result.metrics == {"consistent": 1.0, "unreadable": 0.0}
    biased = evaluate(spec, examples, policy, RENDERER, judge=Judge(AlwaysA(), RENDERER))
    assert biased.result.mean == 0.5
    assert biased.result.metrics["consistent"] == 0.0
    with pytest.raises(ConfigError, match="judge"):
        evaluate(spec, examples, policy, RENDERER)


def test_inspect_without_its_runner_is_refused() -> None:
    with pytest.raises(ConfigError, match="inspect"):
        evaluate(EvalSpec(name="i", kind="inspect", task="t"), [], ScriptedSampler({}), RENDERER)


class _Deferred(StubSampler):
    """Answers only when asked to: futures stay pending until :meth:`release` (to watch the window)."""

    def __init__(self) -> None:
        import concurrent.futures

        self.futures: list[concurrent.futures.Future[SampleResponse]] = []
        self.max_pending = 0

    def respond(self, prompt: ModelInput, num_samples: int, params: SamplingParams) -> APIFuture[SampleResponse]:
        import concurrent.futures

        future: concurrent.futures.Future[SampleResponse] = concurrent.futures.Future()
        self.futures.append(future)
        pending = sum(not f.done() for f in self.futures)
        self.max_pending = max(self.max_pending, pending)
        threading.Timer(
            0.001, future.set_result, (SampleResponse(sequences=(SampledSequence([EOT], "stop"),)),)
        ).start()
        return APIFuture(future)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12))
def test_no_more_than_concurrency_requests_are_in_flight(concurrency: int, n: int) -> None:
    sampler = _Deferred()
    examples = [EvalExample(id=str(i), messages=_user(f"q{i}"), reference="x") for i in range(n)]
    run = evaluate(EvalSpec(name="c", kind="exact_match"), examples, sampler, RENDERER, concurrency=concurrency)
    assert len(run.samples) == n == len(sampler.futures)
    assert sampler.max_pending <= concurrency


def test_transcript_holds_every_graded_sample(tmp_path: pathlib.Path) -> None:
    references = {"a?": "1", "b?": "2"}
    run = evaluate(
        EvalSpec(name="em", kind="exact_match"), _examples(references), ScriptedSampler({"a?": "1"}), RENDERER
    )
    write_transcript(tmp_path / "t.jsonl", run, step=7)
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(row["step"], row["id"], row["response"], row["score"]) for row in rows] == [
        (7, "0", "1", 1.0), (7, "1", "?", 0.0),
    ]  # fmt: skip


# -- the tiny local model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sampler(tmp_path_factory: pytest.TempPathFactory) -> object:
    pytest.importorskip("torch")
    from tinkerflow.shell.backends.local.backend import LocalBackend

    backend = LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("ckpt"))
    return backend.create_sampling_client(base_model="tiny-llama").result()


def test_answers_do_not_depend_on_concurrency_and_repeat_with_the_seed(tiny_sampler: object) -> None:
    from tests.tiny_model import TINY_RENDERER

    examples = [EvalExample(id=str(i), messages=_user(f"q{i}"), reference="x") for i in range(6)]
    spec = EvalSpec(name="t", kind="exact_match", max_tokens=6, temperature=1.0)
    one = evaluate(spec, examples, tiny_sampler, TINY_RENDERER, seed=3, concurrency=1)  # type: ignore[arg-type]  # a LocalSamplingClient
    many = evaluate(spec, examples, tiny_sampler, TINY_RENDERER, seed=3, concurrency=6)  # type: ignore[arg-type]
    other = evaluate(spec, examples, tiny_sampler, TINY_RENDERER, seed=4, concurrency=6)  # type: ignore[arg-type]
    assert [s.response for s in one.samples] == [s.response for s in many.samples]
    assert [s.response for s in one.samples] != [s.response for s in other.samples]
