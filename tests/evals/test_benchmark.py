"""Benchmarks over RL environments (tinkerflow.shell.evals.benchmark / .benchmarks): results that do not depend on
concurrency or on a resume, crash-safe transcripts, refused resumes with other settings, the offline sets agreeing
with their graders, and the GSM8K loader through an ``hf-disk:`` dataset (the hub itself is unreachable here).

Runs sample from the tiny random ``tiny-llama`` (byte vocabulary, 256-token context), so rewards are near -0.1, but
the transcripts (the sampled bytes) tell any change of seed apart.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")

from tests.helpers import KilledError
from tests.tiny_model import TINY_RENDERER

from tinkerflow.errors import ConfigError
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, get_renderer
from tinkerflow.rl.envs.base import ProblemEnv, ProblemGroupBuilder
from tinkerflow.rl.types import Env, StepResult, StopCondition
from tinkerflow.rows import DataError
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.shell.backends.local.backend import LocalBackend
from tinkerflow.shell.backends.protocol import APIFuture, SamplingClient
from tinkerflow.shell.evals.benchmark import (
    SETTINGS_FILE,
    SUMMARY_FILE,
    TRANSCRIPTS_FILE,
    BenchmarkResult,
    BenchmarkResumeError,
    read_items,
    run_benchmark,
)
from tinkerflow.shell.evals.benchmarks import (
    BENCHMARKS,
    BenchmarkItem,
    benchmark_options,
    get_benchmark,
    gsm8k_answer,
)
from tinkerflow.shell.evals.sets import offline_problems
from tinkerflow.shell.io.tokenizers import offline_tokenizer
from tinkerflow.shell.rollouts import RolloutError, RolloutPolicy
from tinkerflow.tokenizers import Tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS = 10
#: Short prompts and answers: the tiny model's context is 256 tokens, and its answers are noise anyway.
ARITHMETIC = {"fewshot": False, "max_tokens": 6}


class CountingSampler:
    """A sampling client that counts ``sample`` calls and, past ``fail_after`` of them, raises (a kill)."""

    def __init__(self, inner: SamplingClient, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.calls = inner, fail_after, 0

    def sample(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams, **kwargs: bool | int
    ) -> APIFuture[SampleResponse]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KilledError
        self.calls += 1
        return self.inner.sample(prompt, num_samples, sampling_params, **kwargs)  # type: ignore[arg-type]

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        return self.inner.compute_logprobs(prompt)

    def get_tokenizer(self) -> Tokenizer:
        return self.inner.get_tokenizer()

    def get_base_model(self) -> str:
        return self.inner.get_base_model()


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory) -> SamplingClient:
    backend = LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"))
    return backend.create_sampling_client(base_model="tiny-llama").result()


def items(n: int = N_ITEMS, group_size: int = 1) -> Sequence[BenchmarkItem]:
    return get_benchmark("arithmetic", TINY_RENDERER, limit=n, group_size=group_size, **ARITHMETIC)


def run(
    builders: Sequence[BenchmarkItem], sampler: SamplingClient, out_dir: pathlib.Path, **kwargs: object
) -> BenchmarkResult:
    options = benchmark_options("arithmetic", limit=len(builders), **ARITHMETIC)
    return run_benchmark("arithmetic", builders, sampler, out_dir=out_dir, temperature=1.0, options=options, **kwargs)  # type: ignore[arg-type]


def lines(out_dir: pathlib.Path) -> list[str]:
    return (out_dir / TRANSCRIPTS_FILE).read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def reference(sampler: SamplingClient, tmp_path_factory: pytest.TempPathFactory) -> BenchmarkResult:
    """An uninterrupted run (concurrency 1) every other run is compared with."""
    return run(items(), sampler, tmp_path_factory.mktemp("reference"), concurrency=1)


# -- determinism ----------------------------------------------------------------------------------------------------


def test_results_do_not_depend_on_concurrency(
    sampler: SamplingClient, reference: BenchmarkResult, tmp_path: pathlib.Path
) -> None:
    wide = run(items(), sampler, tmp_path, concurrency=8)
    assert [item.id for item in wide.items] == [str(index) for index in range(N_ITEMS)]
    for one, eight in zip(reference.items, wide.items, strict=True):
        assert one == eight  # rewards, metrics and the sampled actions, item by item
    assert wide.summary() == reference.summary()
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == reference.summary()
    actions = {turn.action for item in wide.items for turn in item.episodes[0].turns}
    assert len(actions) > 1  # the items were sampled with different seeds


def test_members_of_a_group_get_their_own_seeds_whatever_the_concurrency(
    sampler: SamplingClient, tmp_path: pathlib.Path
) -> None:
    builders = items(4, group_size=3)
    one = run(builders, sampler, tmp_path / "one", concurrency=1, policy=RolloutPolicy(max_concurrency=1))
    many = run(builders, sampler, tmp_path / "many", concurrency=4)
    assert one.items == many.items
    first = one.items[0]
    assert [episode.member for episode in first.episodes] == [0, 1, 2]
    assert len({episode.turns[0].action for episode in first.episodes}) > 1
    assert first.reward == pytest.approx(np.mean([episode.total_reward for episode in first.episodes]))


def test_a_different_seed_samples_differently(
    sampler: SamplingClient, reference: BenchmarkResult, tmp_path: pathlib.Path
) -> None:
    other = run(items(), sampler, tmp_path, seed=1)
    assert [item.episodes for item in other.items] != [item.episodes for item in reference.items]


# -- crashes and resume -----------------------------------------------------------------------------------------------


def test_a_killed_run_resumes_with_only_the_missing_items(
    sampler: SamplingClient, reference: BenchmarkResult, tmp_path: pathlib.Path
) -> None:
    killed = CountingSampler(sampler, fail_after=4)
    with pytest.raises(RolloutError) as caught:
        run(items(), killed, tmp_path, concurrency=3)
    assert isinstance(caught.value.__cause__, KilledError)
    saved = len(lines(tmp_path))
    assert 1 <= saved <= 4
    assert not (tmp_path / SUMMARY_FILE).exists()
    resumed = CountingSampler(sampler)
    result = run(items(), resumed, tmp_path, concurrency=5)
    assert resumed.calls == N_ITEMS - saved  # one sample per item, and only for the missing ones
    assert (result.resumed, result.ran) == (saved, N_ITEMS - saved)
    assert result.items == reference.items
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == reference.summary()
    assert len(lines(tmp_path)) == N_ITEMS
    again = CountingSampler(sampler)
    run(items(), again, tmp_path, concurrency=2)  # finished: nothing to run (concurrency is not a setting)
    assert again.calls == 0


def test_a_torn_last_line_is_ignored_cut_off_and_its_item_run_again(
    sampler: SamplingClient, reference: BenchmarkResult, tmp_path: pathlib.Path
) -> None:
    run(items(), sampler, tmp_path)
    path = tmp_path / TRANSCRIPTS_FILE
    whole = path.read_bytes()
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    torn = whole[: last_start + (len(whole) - last_start) // 2]  # the last record half written, no newline
    path.write_bytes(torn)
    assert len(read_items(path)) == N_ITEMS - 1
    counting = CountingSampler(sampler)
    result = run(items(), counting, tmp_path)
    assert counting.calls == 1
    assert result.items == reference.items
    assert path.read_bytes().startswith(whole[:last_start])
    assert len(lines(tmp_path)) == N_ITEMS
    assert all(json.loads(line) for line in lines(tmp_path))


def test_a_bad_line_before_the_last_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / TRANSCRIPTS_FILE
    path.write_text('{"id": "0"\n{"id": "1"}\n')
    with pytest.raises(BenchmarkResumeError, match=re.escape(f"{TRANSCRIPTS_FILE}:1")):
        read_items(path)


def test_transcripts_without_their_settings_are_not_overwritten(
    sampler: SamplingClient, tmp_path: pathlib.Path
) -> None:
    (tmp_path / TRANSCRIPTS_FILE).write_text('{"id": "0"}\n')
    with pytest.raises(BenchmarkResumeError, match=SETTINGS_FILE):
        run(items(1), sampler, tmp_path)
    assert (tmp_path / TRANSCRIPTS_FILE).read_text() == '{"id": "0"}\n'


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"seed": 5}, ("seed",)),
        ({"temperature": 0.5}, ("temperature",)),
        ({"max_tokens": 3}, ("max_tokens",)),
        ({"options": {"limit": N_ITEMS, "fewshot": True}}, ("options.fewshot", "options.group_size", "options.limit")),
    ],
)
def test_a_resume_with_other_settings_is_refused_naming_the_field(
    sampler: SamplingClient, tmp_path: pathlib.Path, change: dict[str, object], fields: tuple[str, ...]
) -> None:
    builders = items(2)
    run(builders, sampler, tmp_path)
    before = (tmp_path / SETTINGS_FILE).read_text(), (tmp_path / TRANSCRIPTS_FILE).read_text()
    kwargs: dict[str, object] = {"temperature": 1.0, "options": benchmark_options("arithmetic", limit=2, **ARITHMETIC)}
    kwargs.update(change)
    with pytest.raises(BenchmarkResumeError) as caught:
        run_benchmark("arithmetic", builders, sampler, out_dir=tmp_path, **kwargs)  # type: ignore[arg-type]
    assert set(fields) <= set(caught.value.fields)
    assert all(field in str(caught.value) for field in fields)
    assert ((tmp_path / SETTINGS_FILE).read_text(), (tmp_path / TRANSCRIPTS_FILE).read_text()) == before
    counting = CountingSampler(sampler)
    run_benchmark("arithmetic", builders, counting, out_dir=tmp_path, resume=False, **kwargs)  # type: ignore[arg-type]
    assert counting.calls == 2  # resume=False starts over with the new settings


def test_other_items_are_refused_on_resume(sampler: SamplingClient, tmp_path: pathlib.Path) -> None:
    run(items(3), sampler, tmp_path)
    with pytest.raises(BenchmarkResumeError) as caught:
        run_benchmark(
            "arithmetic", items(4), sampler, out_dir=tmp_path, temperature=1.0,
            options=benchmark_options("arithmetic", limit=3, **ARITHMETIC),
        )  # fmt: skip
    assert {"items", "items_digest"} <= set(caught.value.fields)


# -- what a result holds ---------------------------------------------------------------------------------------------


def test_the_result_logs_like_an_evaluation(reference: BenchmarkResult) -> None:
    evaluation = reference.eval_result
    assert (evaluation.name, evaluation.kind, evaluation.n) == ("arithmetic", "reward", N_ITEMS)
    assert evaluation.scores_N.tolist() == [item.reward for item in reference.items]
    assert evaluation.mean == pytest.approx(np.mean(evaluation.scores_N))
    assert set(evaluation.metrics) == {"correct", "format", "parse_error"}
    row = evaluation.as_row("bench/")
    assert row["bench/arithmetic/reward"] == reference.mean
    assert "bench/arithmetic/correct" in row
    summary = reference.summary()
    assert summary["n"] == N_ITEMS
    assert summary["settings"]["options"]["limit"] == N_ITEMS  # type: ignore[index]
    transcript = reference.items[0]
    assert "What is" in transcript.prompt
    assert transcript.episodes[0].turns[0].logs["reference_answer"]


def test_positional_ids_and_a_progress_bar(
    sampler: SamplingClient, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = [item.builder for item in items(3)]
    result = run_benchmark("plain", plain, sampler, out_dir=tmp_path, progress=True)
    assert [item.id for item in result.items] == ["0", "1", "2"]
    assert "plain" in capsys.readouterr().err


class BrokenEnv:
    async def initial_observation(self) -> tuple[ModelInput, StopCondition]:
        return ModelInput.from_tokens(TINY_RENDERER.tokenizer.encode("hi")), StopCondition(max_tokens=2)

    async def step(self, action: SampledSequence) -> StepResult:
        raise RuntimeError("the grader broke")


def test_an_item_whose_members_all_fail_is_counted_apart(sampler: SamplingClient, tmp_path: pathlib.Path) -> None:
    def broken() -> Env:
        return BrokenEnv()

    builders = [*items(2), BenchmarkItem("broken", ProblemGroupBuilder(broken, 2))]
    result = run_benchmark("mixed", builders, sampler, out_dir=tmp_path, policy=RolloutPolicy(on_failure="drop"))
    assert (result.n, result.n_failed) == (2, 1)
    failed = result.items[2]
    assert failed.reward is None
    assert len(failed.failures) == 2
    assert "the grader broke" in failed.failures[0]
    assert result.mean == pytest.approx(np.mean([item.reward for item in result.items[:2]]))


# -- the registry and the sets agree with the graders -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> Renderer:
    return get_renderer("smollm2", offline_tokenizer("smollm2"))


def answer_tokens(renderer: Renderer, text: str) -> SampledSequence:
    """``text`` as a model would sample it with ``renderer``: its tokens and the renderer's stop sequence."""
    stops = renderer.stop_sequences()
    tokens = list(renderer.tokenizer.encode(text))
    tokens += [stops.tokens[0]] if stops.tokens else list(renderer.tokenizer.encode(stops.strings[0]))
    return SampledSequence(tokens_T=tokens, stop_reason="stop", logprobs_T=np.zeros(len(tokens)))


def answered(item: BenchmarkItem, text_of: str) -> StepResult:
    """The env's step result for its own reference answer written as ``text_of`` (``{}`` is the answer)."""

    async def play() -> StepResult:
        env = (await item.make_envs())[0]
        assert isinstance(env, ProblemEnv)
        await env.initial_observation()
        return await env.step(answer_tokens(env.renderer, text_of.format(env.reference_answer)))

    return asyncio.run(play())


BOXED = "Working it out, the answer is \\boxed{{{}}}."


@pytest.mark.parametrize("renderer_name", ["smol", "tiny"])
def test_every_offline_answer_is_graded_correct_by_its_env(
    renderer_name: str, smol: Renderer, request: pytest.FixtureRequest
) -> None:
    renderer = smol if renderer_name == "smol" else TINY_RENDERER
    builders = get_benchmark("math_boxed", renderer)
    assert len(builders) == 8 + 42
    assert len({item.item_id for item in builders}) == len(builders)
    for item in builders:
        result = answered(item, BOXED)
        assert (result.reward, result.metrics["correct"], result.metrics["format"]) == (1.0, 1.0, 1.0), item.item_id
        assert answered(item, "I think it is \\boxed{{{}0}}.").metrics["correct"] == 0.0  # the grader is not lax


def test_the_grade_school_set_parses() -> None:
    problems = offline_problems()
    assert len(problems) == 42
    for item_id, problem in problems:
        assert item_id.startswith("grade_school/gs-")
        assert problem.question.endswith("?")
        assert int(problem.answer) > 0  # integer answers, as written


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12))
def test_arithmetic_items_are_drawn_from_the_seed_and_graded_by_their_env(seed: int, n: int) -> None:
    builders = get_benchmark("arithmetic", TINY_RENDERER, seed=seed, n=n, fewshot=False)
    again = get_benchmark("arithmetic", TINY_RENDERER, seed=seed, n=n + 3, fewshot=False)[:n]
    assert len(builders) == n
    for item, same in zip(builders, again, strict=True):
        assert answered(item, "Answer: {}").reward == 1.0
        assert answered(item, "{}").logs["question"] == answered(same, "{}").logs["question"]


@given(
    answers=st.lists(st.integers(-(10**6), 10**6) | st.fractions(max_denominator=50), min_size=1, max_size=5),
)
def test_a_jsonl_benchmark_grades_its_reference_answers_correct(
    answers: list[object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "set.jsonl"
    rows = [{"question": f"What is question {index}?", "answer": str(value)} for index, value in enumerate(answers)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    builders = get_benchmark(f"jsonl:{path}", TINY_RENDERER, fewshot=False)
    assert [item.item_id for item in builders] == [str(index) for index in range(len(answers))]
    for item in builders:
        assert answered(item, BOXED).reward == 1.0


def test_registry_refusals(tmp_path: pathlib.Path) -> None:
    assert set(BENCHMARKS) >= {"arithmetic", "math_boxed", "gsm8k"}
    with pytest.raises(ConfigError, match="unknown benchmark"):
        get_benchmark("nope", TINY_RENDERER)
    with pytest.raises(ConfigError) as caught:
        get_benchmark("math_boxed", TINY_RENDERER, colour="red")
    assert caught.value.field == "options.colour"
    with pytest.raises(ConfigError) as caught:
        get_benchmark("math_boxed", TINY_RENDERER, set="other")
    assert caught.value.field == "options.set"
    with pytest.raises(ConfigError) as caught:
        get_benchmark("arithmetic", TINY_RENDERER, fewshot="yes")
    assert caught.value.field == "options.fewshot"
    assert len(get_benchmark("math_boxed", TINY_RENDERER, limit=5, set="grade_school")) == 5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "answer": "1", "id": "a"}\n{"question": "Q?", "answer": "2", "id": "a"}\n')
    with pytest.raises(DataError, match=re.escape("bad.jsonl:2")):
        get_benchmark(f"jsonl:{bad}", TINY_RENDERER)


# -- GSM8K through the project's Hugging Face loader ------------------------------------------------------------------

GSM_ROWS = {
    "question": ["Ann has 3 boxes of 4 pens. How many pens?", "A shop sells 1,200 cups a day. How many in 2 days?"],
    "answer": ["3 boxes of 4 pens is <<3*4=12>>12 pens.\n#### 12", "1200 * 2 = 2400 cups.\n#### 2,400"],
}


def test_gsm8k_loads_an_hf_disk_dataset_and_grades_the_answer_after_the_marks(
    tmp_path: pathlib.Path, smol: Renderer
) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(GSM_ROWS)}).save_to_disk(str(tmp_path / "dict"))
    datasets.Dataset.from_dict(GSM_ROWS).save_to_disk(str(tmp_path / "single"))
    for folder in ("dict", "single"):
        builders = get_benchmark("gsm8k", smol, source=f"hf-disk:{tmp_path / folder}")
        assert [item.item_id for item in builders] == ["0", "1"]
        assert [answered(item, BOXED).reward for item in builders] == [1.0, 1.0]
        assert answered(builders[1], "\\boxed{{2400}}").metrics["correct"] == 1.0  # thousands separator ignored
    assert len(get_benchmark("gsm8k", smol, source=f"hf-disk:{tmp_path / 'dict'}", limit=1)) == 1
    assert gsm8k_answer("no marks") is None
    broken = {"question": ["Q?"], "answer": ["no final answer"]}
    datasets.Dataset.from_dict(broken).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(DataError, match="####"):
        get_benchmark("gsm8k", smol, source=f"hf-disk:{tmp_path / 'broken'}")
