"""RLHF: the judge's prompts and SL data, tournaments and win-fraction rewards (pure, property-tested); the judge's
probability from crafted logprobs on a fake sampler; group rewards from a fake judge; and the two-stage pipeline
end to end on the tiny local model (a role_colon renderer over its byte vocabulary), with a kill in stage 2 and a
resume that skips the finished stage 1."""

from __future__ import annotations

import asyncio
import io
import json
import math
import pathlib
import re
from collections.abc import Sequence

import attrs
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tests.byte_renderer import EOT, ByteRenderer
from tests.helpers import KilledError

from tinkerflow.chat import Conversation, Message
from tinkerflow.config import SLConfig
from tinkerflow.errors import ConfigError, NonFiniteError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.preference import testing as pft
from tinkerflow.preference.records import Comparison, LabeledComparison, TieError
from tinkerflow.preference.reward_model import (
    JUDGE_INSTRUCTION,
    JudgeMetrics,
    JudgeOrder,
    answer_probability,
    judge_answer,
    judge_conversation,
    judge_metrics,
    reward_model_conversations,
    tournament_pairs,
    win_fraction_rewards,
)
from tinkerflow.render import build_generation_prompt
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import Trajectory, Transition
from tinkerflow.sampling import SampledSequence
from tinkerflow.serde import from_json, to_json
from tinkerflow.shell.backends.protocol import APIFuture

# -- helpers ----------------------------------------------------------------------------------------------------


def _user(text: str) -> Conversation:
    return Conversation(messages=(Message(role="user", content=text),))


def _answer(text: str) -> tuple[Message, ...]:
    return (Message(role="assistant", content=text),)


def _labeled(prompt: str, chosen: str, rejected: str, label: str) -> LabeledComparison:
    a, b = (chosen, rejected) if label == "a" else (rejected, chosen)
    return LabeledComparison(
        Comparison(prompt=_user(prompt), completion_a=_answer(a), completion_b=_answer(b)),
        label,  # type: ignore[arg-type]  # "a" or "b"
    )


_SECTIONS = re.compile(r"### Response A\n(?P<a>.*)\n\n### Response B\n(?P<b>.*)\Z", re.S)


def _responses(conversation: Conversation) -> tuple[str, str]:
    match = _SECTIONS.search(conversation.messages[0].text())
    assert match is not None
    return match["a"], match["b"]


# -- judge prompts and SL data ----------------------------------------------------------------------------------


def test_judge_conversation_shows_both_completions_in_order_and_the_answer() -> None:
    comparison = Comparison(
        prompt=Conversation(
            messages=(
                Message(role="system", content="be brief"),
                Message(role="user", content="2+2?"),
            )
        ),
        completion_a=_answer("4"),
        completion_b=_answer("five"),
    )
    question = judge_conversation(comparison)
    assert [m.role for m in question.messages] == ["user"]
    text = question.messages[0].text()
    assert text.startswith(JUDGE_INSTRUCTION)
    assert "system: be brief\nuser: 2+2?" in text
    assert _responses(question) == ("4", "five")
    swapped = judge_conversation(comparison, order="ba", answer="B", instruction="Pick one.")
    assert _responses(swapped) == ("five", "4")
    assert swapped.messages[0].text().startswith("Pick one.")
    assert swapped.messages[-1] == Message(role="assistant", content="B")
    with pytest.raises(ConfigError):
        judge_conversation(comparison, order="ab?")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        judge_conversation(comparison, answer="C")  # type: ignore[arg-type]


def test_judge_answer_table() -> None:
    assert [judge_answer(label, order) for label in ("a", "b") for order in ("ab", "ba")] == ["A", "B", "B", "A"]
    with pytest.raises(TieError):
        judge_answer("tie", "ab")


@settings(max_examples=40, deadline=None)
@given(st.lists(pft.labeled_comparisons(max_prompt_messages=3, max_completion_messages=2), max_size=6))
def test_reward_model_conversations_answer_with_the_chosen_letter(labeled: list[LabeledComparison]) -> None:
    kept = [item for item in labeled if not item.is_tie]
    both = reward_model_conversations(labeled)
    assert len(both) == 2 * len(kept)
    answers = [conversation.messages[-1].text() for conversation in both]
    assert answers.count("A") == answers.count("B") == len(kept)  # the letter says nothing about the position
    for item, pair in zip(kept, zip(both[::2], both[1::2], strict=True), strict=True):
        chosen, _ = item.chosen_rejected()
        orders: tuple[JudgeOrder, JudgeOrder] = ("ab", "ba")
        for conversation, order in zip(pair, orders, strict=True):
            assert conversation == judge_conversation(
                item.comparison, order=order, answer=judge_answer(item.label, order)
            )
            shown = dict(zip("AB", _responses(conversation), strict=True))
            assert chosen[-1].text() in shown[conversation.messages[-1].text()]
    single = reward_model_conversations(labeled, both_orders=False)
    assert len(single) == len(kept)
    if any(item.is_tie for item in labeled):
        with pytest.raises(TieError):
            reward_model_conversations(labeled, ties="raise")


def test_one_order_alternates_so_chosen_always_a_still_gives_balanced_letters() -> None:
    labeled = [_labeled(f"q{i}", "yes", "no", "a") for i in range(6)]
    answers = [c.messages[-1].text() for c in reward_model_conversations(labeled, both_orders=False)]
    assert answers == ["A", "B", "A", "B", "A", "B"]


# -- tournaments and win fractions ------------------------------------------------------------------------------


@given(st.integers(1, 12))
def test_all_pairs_tournament(n: int) -> None:
    pairs = tournament_pairs(n)
    assert pairs == tuple((i, j) for i in range(n) for j in range(i + 1, n))


@given(st.integers(2, 14).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))))
def test_reduced_tournament_is_regular(schedule: tuple[int, int]) -> None:
    n, k = schedule
    assume(not (k < n - 1 and k % 2 and n % 2))
    pairs = tournament_pairs(n, opponents=k)
    assert len(set(pairs)) == len(pairs) == n * k // 2
    assert all(0 <= i < j < n for i, j in pairs)
    degree = np.bincount(np.asarray(pairs).ravel(), minlength=n)
    assert (degree == k).all()


def test_tournament_rejects_impossible_schedules() -> None:
    with pytest.raises(ConfigError):
        tournament_pairs(5, opponents=3)  # a 3-regular graph on 5 vertices does not exist
    with pytest.raises(ConfigError):
        tournament_pairs(0)
    with pytest.raises(ConfigError):
        tournament_pairs(4, opponents=0)


@st.composite
def _tournaments(draw: st.DrawFn) -> tuple[int, dict[tuple[int, int], float], bool]:
    """A regular schedule with random probabilities, judged in one presentation order or both."""
    n = draw(st.integers(1, 9))
    k = draw(st.integers(1, max(1, n - 1)))
    if k < n - 1 and k % 2 and n % 2:
        k -= 1
    pairs = tournament_pairs(n, opponents=k) if k >= 1 else ()
    both = draw(st.booleans())
    probability = st.floats(0.0, 1.0)
    table: dict[tuple[int, int], float] = {}
    for i, j in pairs:
        table[(i, j) if draw(st.booleans()) else (j, i)] = draw(probability)
        if both:
            table[(j, i) if (i, j) in table else (i, j)] = draw(probability)
    return n, table, both


@given(_tournaments())
def test_win_fractions_lie_in_unit_interval_and_sum_to_half_n(
    case: tuple[int, dict[tuple[int, int], float], bool],
) -> None:
    n, table, _ = case
    rewards_G = win_fraction_rewards(n, table)
    assert rewards_G.dtype == np.float64
    assert rewards_G.shape == (n,)
    assert ((rewards_G >= 0) & (rewards_G <= 1)).all()
    assert math.isclose(float(rewards_G.sum()), n / 2, abs_tol=1e-9)


@given(_tournaments(), st.randoms(use_true_random=False))
def test_win_fractions_are_permutation_equivariant(
    case: tuple[int, dict[tuple[int, int], float], bool], rng: object
) -> None:
    n, table, _ = case
    perm = list(range(n))
    rng.shuffle(perm)  # type: ignore[attr-defined]  # a random.Random
    renamed = {(perm[i], perm[j]): p for (i, j), p in table.items()}
    np.testing.assert_allclose(win_fraction_rewards(n, renamed)[perm], win_fraction_rewards(n, table), atol=1e-12)


def test_symmetric_inputs_give_equal_rewards() -> None:
    for n in range(1, 7):
        even = {pair: 0.5 for pair in tournament_pairs(n)}
        np.testing.assert_array_equal(win_fraction_rewards(n, even), np.full(n, 0.5))
    # a judge that always prefers whatever it sees first is fair once both orders are averaged
    biased = {(i, j): 0.9 for i in range(4) for j in range(4) if i != j}
    np.testing.assert_allclose(win_fraction_rewards(4, biased), np.full(4, 0.5))


def test_win_fraction_formula() -> None:
    # 0 beats 1 with 0.8 (0 first) and with 1 - 0.4 = 0.6 (1 first): P(0 > 1) = 0.7
    table = {(0, 1): 0.8, (1, 0): 0.4, (0, 2): 1.0, (2, 1): 0.5}
    rewards = win_fraction_rewards(4, table)
    np.testing.assert_allclose(rewards, [(0.7 + 1.0) / 2, (0.3 + 0.5) / 2, (0.0 + 0.5) / 2, 0.5])
    with pytest.raises(ValidationError):
        win_fraction_rewards(2, {(0, 0): 0.5})
    with pytest.raises(ValidationError):
        win_fraction_rewards(2, {(0, 2): 0.5})
    with pytest.raises(ValidationError):
        win_fraction_rewards(2, {(0, 1): 1.5})
    with pytest.raises(NonFiniteError):
        win_fraction_rewards(2, {(0, 1): math.nan})


@given(st.floats(-50, 0), st.floats(-50, 0))
def test_answer_probability_is_a_normalized_softmax(lp_a: float, lp_b: float) -> None:
    p = answer_probability(lp_a, lp_b)
    assert math.isclose(p, math.exp(lp_a) / (math.exp(lp_a) + math.exp(lp_b)), rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(p + answer_probability(lp_b, lp_a), 1.0, abs_tol=1e-12)


def test_answer_probability_edges() -> None:
    assert answer_probability(-math.inf, -math.inf) == 0.5
    assert answer_probability(0.0, -math.inf) == 1.0
    with pytest.raises(ValidationError):
        answer_probability(math.nan, 0.0)


def test_judge_metrics_and_records_round_trip() -> None:
    metrics = judge_metrics([0.9, 0.5, 0.2, 0.7])
    assert metrics.count == 4
    assert metrics.accuracy == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert metrics.mean_prob_chosen == pytest.approx(0.575)
    assert metrics.nll == pytest.approx(-np.mean(np.log([0.9, 0.5, 0.2, 0.7])))
    empty = judge_metrics([])
    assert empty == JudgeMetrics(count=0, accuracy=None, mean_prob_chosen=None, nll=None)
    for record in (metrics, empty):
        assert from_json(to_json(record), JudgeMetrics) == record
    with pytest.raises(ValidationError):
        JudgeMetrics(count=0, accuracy=0.5, mean_prob_chosen=None, nll=None)


# -- the judge and the group rewards, on fakes ------------------------------------------------------------------

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.tiny_model import TINY_RENDERER as RENDERER  # noqa: E402

from tinkerflow.shell.recipes.rlhf import (  # noqa: E402
    REWARD_MODEL_FILE,
    PairwiseJudge,
    PreferenceEnv,
    PreferenceEnvGroupBuilder,
    RewardModelResult,
    RLHFResult,
    preference_dataset,
    run_rlhf,
)


class CraftedJudgeSampler:
    """Reads the rendered judge conversation (``tests.byte_renderer.ByteRenderer`` tokens) and scores the answer letter,
    the token before the final end-of-turn, with ``log(score(response under that letter, letter) / 100)``."""

    def __init__(self, score: object) -> None:
        self.score = score
        self.calls = 0

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        self.calls += 1
        tokens = prompt.to_tokens()
        cut = [i for i, t in enumerate(tokens) if t == EOT]
        user = bytes(int(t) for t in tokens[: cut[0]]).decode()
        letter = chr(int(tokens[-2]))
        match = _SECTIONS.search(user)
        assert match is not None
        assert letter in "AB"
        scores = np.zeros(tokens.size, dtype=np.float32)
        scores[0] = np.nan
        scores[-2] = math.log(self.score(match[letter.lower()], letter) / 100)  # type: ignore[operator]
        return APIFuture.completed(scores)


def test_judge_probability_from_crafted_logprobs() -> None:
    prompt = _user("say something")
    longer = PairwiseJudge(CraftedJudgeSampler(lambda text, letter: len(text)), ByteRenderer())  # type: ignore[arg-type]
    p = asyncio.run(longer.prob_first_better(prompt, _answer("abcdef"), _answer("ab")))
    assert p == pytest.approx(6 / 8)
    first, second = asyncio.run(longer.presentation_probabilities(prompt, _answer("abc"), _answer("a")))
    assert first == pytest.approx(0.75)
    assert second == pytest.approx(0.75)
    # a judge that only looks at the position (A: 0.8, B: 0.2) is neutral once both orders are averaged
    sampler = CraftedJudgeSampler(lambda text, letter: 0.8 if letter == "A" else 0.2)
    positional = PairwiseJudge(sampler, ByteRenderer())  # type: ignore[arg-type]
    first, second = asyncio.run(positional.presentation_probabilities(prompt, _answer("x"), _answer("yy")))
    assert first == pytest.approx(0.8)
    assert second == pytest.approx(0.2)
    assert asyncio.run(positional.prob_first_better(prompt, _answer("x"), _answer("yy"))) == pytest.approx(0.5)
    assert sampler.calls == 8  # two answers x two orders, per call


@attrs.frozen
class LengthJudge:
    """Prefers the longer answer: P(a > b) = sigmoid(len(a) - len(b))."""

    async def prob_first_better(
        self, prompt: Conversation, completion_a: Sequence[Message], completion_b: Sequence[Message]
    ) -> float:
        difference = len(completion_a[0].text()) - len(completion_b[0].text())
        return 1.0 / (1.0 + math.exp(-difference))


def _trajectory(text: str, ended: bool = True) -> Trajectory:
    tokens = [*text.encode(), *([EOT] if ended else [])]
    transition = Transition(
        observation=ModelInput.from_tokens([1, 2]),
        action_tokens_T=tokens,
        action_logprobs_T=np.zeros(len(tokens)),
        reward=0.0,
        done=True,
    )
    return Trajectory(transitions=(transition,))


@pytest.mark.parametrize("opponents", [None, 2, 3])
def test_group_rewards_from_a_length_judge_are_ordered_by_length(opponents: int | None) -> None:
    texts = ["aaa", "a", "aaaaaa", "aa", "aaaaa", "aaaa"]
    builder = PreferenceEnvGroupBuilder(
        prompt=_user("talk"), judge=LengthJudge(), renderer=ByteRenderer(), group_size=6, opponents=opponents
    )
    rewards = asyncio.run(builder.compute_group_rewards([_trajectory(text) for text in texts]))
    values = np.array([reward for reward, _ in rewards])
    assert ((values >= 0) & (values <= 1)).all()
    assert values.mean() == pytest.approx(0.5)
    if opponents is None:  # everyone meets everyone: the order is exactly the length order
        assert list(np.argsort(values)) == list(np.argsort([len(t) for t in texts]))
    assert values[texts.index("aaaaaa")] > 0.5 > values[texts.index("a")]
    expected_matches = 5 if opponents is None else opponents
    assert all(metrics["matches"] == expected_matches for _, metrics in rewards)
    assert [metrics["win_fraction"] for _, metrics in rewards] == list(values)
    odd = asyncio.run(builder.compute_group_rewards([_trajectory(t) for t in texts[:5]]))  # a member dropped
    assert sum(reward for reward, _ in odd) == pytest.approx(2.5)


def test_preference_env_step_reward_is_the_format_term_only() -> None:
    prompt = _user("hi")
    env = PreferenceEnv(ByteRenderer(), prompt, max_tokens=5, format_coef=0.5)
    observation, stop = asyncio.run(env.initial_observation())
    assert observation == build_generation_prompt(ByteRenderer(), prompt)
    assert stop.stop_tokens == (EOT,)
    assert stop.max_tokens == 5
    good = asyncio.run(env.step(SampledSequence(tokens_T=[104, EOT], stop_reason="stop", logprobs_T=[0.0, 0.0])))
    assert (good.reward, good.parse_error, good.metrics["format"]) == (0.0, False, 1.0)
    cut = PreferenceEnv(ByteRenderer(), prompt, format_coef=0.5)
    bad = asyncio.run(cut.step(SampledSequence(tokens_T=[104, 105], stop_reason="length", logprobs_T=[0.0, 0.0])))
    assert (bad.reward, bad.parse_error, bad.metrics["format"]) == (-0.5, True, 0.0)
    with pytest.raises(ValidationError):
        asyncio.run(cut.step(SampledSequence(tokens_T=[104], stop_reason="stop", logprobs_T=[0.0])))


def test_preference_dataset_covers_the_steps() -> None:
    prompts = [_user(f"p{i}") for i in range(5)]
    dataset = preference_dataset(prompts, LengthJudge(), ByteRenderer(), group_size=3, batch_size=2, steps=7)
    assert len(dataset) >= 7
    seen = {builder.prompt for i in range(3) for builder in dataset.get_batch(i)}  # type: ignore[attr-defined]
    assert seen == set(prompts)
    with pytest.raises(ConfigError):
        preference_dataset([], LengthJudge(), ByteRenderer(), group_size=3, batch_size=2)


# -- end to end on the tiny local model -------------------------------------------------------------------------


MODEL = "tiny-llama:context=512"
INSTRUCTION = "Better: A or B?"
GOOD, BAD = ("fine", "great", "good"), ("bad", "poor", "meh")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-wide, though only the tests below train


def _comparisons(count: int, offset: int) -> list[LabeledComparison]:
    return [
        _labeled(f"q{offset + i}", GOOD[i % 3], BAD[(i // 3) % 3], "a" if (i // 2) % 2 else "b") for i in range(count)
    ]


def _configs(root: pathlib.Path, rm_save_every: int = 0) -> tuple[SLConfig, RLConfig]:
    rm = SLConfig(
        train_data="<memory:rlhf>",
        base_model=MODEL,
        run_dir=str(root / "rm"),
        batch_size=8,
        epochs=2,
        learning_rate=1e-2,
        lora_rank=4,
        eval_every=0,
        save_every=rm_save_every,
        num_samples_shown=0,
        max_length=512,
    )
    rl = RLConfig(
        env="rlhf",
        base_model=MODEL,
        run_dir=str(root / "rl"),
        steps=3,
        groups_per_batch=2,
        group_size=4,
        learning_rate=1e-2,
        lora_rank=4,
        max_tokens=6,
        eval_every=0,
        eval_groups=0,
        save_every=1,
        seed=1,
    )
    return rm, rl


def _run(root: pathlib.Path, rm_save_every: int = 0, **kwargs: object) -> RLHFResult:
    from tinkerflow.shell.backends.local.backend import LocalBackend

    rm, rl = _configs(root, rm_save_every)
    backend = LocalBackend(checkpoint_dir=root / "checkpoints")
    prompts = [_user(f"p{i}") for i in range(4)]
    return run_rlhf(
        rm,
        rl,
        backend,
        RENDERER,
        _comparisons(16, 0),
        _comparisons(6, 100),
        prompts,
        instruction=INSTRUCTION,
        eval_limit=4,
        out=io.StringIO(),
        **kwargs,  # type: ignore[arg-type]  # after_step only
    )


def test_rlhf_end_to_end_with_a_kill_in_stage_two(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def kill(stage: str, step: int) -> None:
        if (stage, step) == ("policy", 1):
            raise KilledError

    with pytest.raises(KilledError):
        _run(tmp_path, after_step=kill)
    rm_dir, rl_dir = tmp_path / "rm", tmp_path / "rl"
    first = from_json((rm_dir / REWARD_MODEL_FILE).read_bytes(), RewardModelResult)
    assert json.loads((rl_dir / "state.json").read_text())["step"] == 1
    rm_metrics = (rm_dir / "metrics.jsonl").read_bytes()

    import tinkerflow.shell.recipes.rlhf as rlhf_module

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the finished reward-model stage ran again")

    monkeypatch.setattr(rlhf_module, "run_sl", no_training)
    result = _run(tmp_path)

    # stage 1: reused, and it had lowered the judge's held-out NLL
    assert result.reward_model_reused
    assert result.reward_model == first
    assert (rm_dir / "metrics.jsonl").read_bytes() == rm_metrics
    nll_before, nll_after = first.eval_nll_before, first.eval_nll_after
    assert nll_before is not None
    assert nll_after is not None
    assert nll_after < nll_before - 1.0
    for metrics in (first.accuracy_before, first.accuracy_after):
        assert metrics.count == 4
        assert metrics.accuracy is not None
        assert 0.0 <= metrics.accuracy <= 1.0
    assert from_json(to_json(first), RewardModelResult) == first

    # stage 2: resumed at step 1, every group's rewards are win fractions (in [0, 1], mean 0.5)
    assert result.policy.steps == 3
    rows = [json.loads(line) for line in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(row["reward/mean"] == pytest.approx(0.5) for row in rows)
    episodes = [
        json.loads(json.loads(line)["episode"]) for line in (rl_dir / "transcripts.jsonl").read_text().splitlines()
    ]
    groups: dict[str, list[float]] = {}
    for episode in episodes:
        groups.setdefault(episode["trajectory_id"].rsplit("/", 1)[0], []).append(episode["total_reward"])
    assert len(groups) == 3 * 2
    for rewards in groups.values():
        assert len(rewards) == 4
        assert all(0.0 <= r <= 1.0 for r in rewards)
        assert np.mean(rewards) == pytest.approx(0.5)
    assert any(abs(r - 0.5) > 1e-7 for rewards in groups.values() for r in rewards)  # the judge tells answers apart
    assert from_json(to_json(result), RLHFResult) == result
    for rate in (result.win_rate_before, result.win_rate_after):
        assert rate is not None
        assert 0.0 <= rate <= 1.0


def test_a_kill_in_stage_one_resumes_stage_one(tmp_path: pathlib.Path) -> None:
    def kill(stage: str, step: int) -> None:
        if (stage, step) == ("reward_model", 2):
            raise KilledError

    with pytest.raises(KilledError):
        _run(tmp_path, rm_save_every=2, after_step=kill)
    assert json.loads((tmp_path / "rm" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "rm" / REWARD_MODEL_FILE).exists()
    assert not (tmp_path / "rl").exists()
    result = _run(tmp_path, rm_save_every=2)
    assert not result.reward_model_reused
    assert result.reward_model.steps == 8  # 16 comparisons x 2 orders = 32 conversations, 8 a batch, 2 epochs
    steps = [json.loads(line)["step"] for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(result.reward_model.steps))
    assert result.policy.steps == 3


def test_rewards_are_the_trained_judges_win_fractions(tmp_path: pathlib.Path) -> None:
    """A group rolled out with the trained judge gets exactly the win fractions the judge's pairwise
    probabilities give."""
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.completers import SamplerTokenCompleter
    from tinkerflow.shell.recipes.rlhf import train_reward_model
    from tinkerflow.shell.rollouts import RolloutPolicy, rollout_group

    rm, _ = _configs(tmp_path)
    rm = attrs.evolve(rm, epochs=1)
    backend = LocalBackend(checkpoint_dir=tmp_path / "checkpoints")
    result, reused = train_reward_model(
        rm, backend, RENDERER, _comparisons(8, 0), _comparisons(2, 100), instruction=INSTRUCTION, eval_limit=2
    )
    assert not reused
    judge = PairwiseJudge(
        backend.create_sampling_client(model_path=result.sampler_checkpoint).result(), RENDERER, instruction=INSTRUCTION
    )
    prompt = _user("p0")
    builder = PreferenceEnvGroupBuilder(prompt=prompt, judge=judge, renderer=RENDERER, group_size=3, max_tokens=5)
    policy = backend.create_sampling_client(base_model=MODEL).result()
    group = asyncio.run(
        rollout_group(builder, SamplerTokenCompleter(policy, max_tokens=5, seed=3), RolloutPolicy(), "g")
    )
    responses = [builder.response(trajectory) for trajectory in group.trajectories]
    table = {
        (i, j): asyncio.run(judge.prob_first_better(prompt, (responses[i],), (responses[j],)))
        for i, j in tournament_pairs(3)
    }
    np.testing.assert_allclose(group.group_rewards_G, win_fraction_rewards(3, table), atol=1e-6)
    # a second call with the same config finds the finished stage
    again, reused = train_reward_model(
        rm, backend, RENDERER, _comparisons(8, 0), _comparisons(2, 100), instruction=INSTRUCTION
    )
    assert reused
    assert again == result
