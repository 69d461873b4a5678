"""Differential tests of tinkerflow.preference against tinker-cookbook 0.6.1's DPO.

* The loss, metrics and gradient equal ``tinker_cookbook.preference.train_dpo.compute_dpo_loss`` (gradient by torch
  autograd through it), on sequence logprobs and, through the weighted token sums of the cookbook's loss function,
  on per-token logprobs.
* The chosen/rejected datums equal those of the cookbook's ``DPODatasetBuilderFromComparisons`` (the real builder,
  its renderer built from the same offline vocabulary) for one-message completions. For multi-message completions
  tinkerflow weights every assistant message of the completion, the cookbook only the last one (a deliberate
  difference, compared against the cookbook's renderer in ``last_assistant_turn`` mode); and the cookbook pairs a tie
  as "B preferred" where tinkerflow makes ties a typed choice.

The loss tests and a short datum test (llama3) run by default (about 20 s, mostly loading torch and tokenizers); the
datum test over every text family with many more examples is marked ``conformance`` (``nox -s conformance``; about
two minutes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import TinkerflowError, ValidationError
from tinkerflow.interop import datum_to_tinker
from tinkerflow.preference import (
    COMPLETION_ROLES,
    Comparison,
    LabeledComparison,
    TieError,
    dpo_loss,
    dpo_pairs,
    dpo_token_gradients,
    sequence_logprobs,
)
from tinkerflow.preference import testing as pft

from . import _cookbook as cb
from ._compare import Family, families
from ._strategies import conversations

torch = pytest.importorskip("torch")
train_dpo = pytest.importorskip("tinker_cookbook.preference.train_dpo")


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


_SETTINGS = _settings(150)
QUICK_EXAMPLES = 8
LONG_EXAMPLES = 200

FAMILY_NAMES = ("llama3", "role_colon", "qwen3", "qwen3_disable_thinking", "qwen3_instruct", "deepseekv3")
FAMILIES = [family for family in families() if family.name in FAMILY_NAMES]


@pytest.fixture(autouse=True)
def _quiet_cookbook() -> Iterator[None]:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


# -- the loss ------------------------------------------------------------------------------------------------------


def _cookbook_loss(pc: Any, pr: Any, rc: Any, rr: Any, beta: float) -> tuple[float, dict[str, float]]:
    loss, metrics = train_dpo.compute_dpo_loss(
        chosen_logprobs=list(pc),
        rejected_logprobs=list(pr),
        chosen_ref_logprobs=list(rc),
        rejected_ref_logprobs=list(rr),
        dpo_beta=beta,
    )
    loss.backward()
    return float(loss.item()), metrics


@_SETTINGS
@given(
    st.one_of(
        pft.dpo_batches(max_pairs=16),
        pft.dpo_batches(max_pairs=16, scale=1e4, betas=st.floats(1e-4, 10.0)),
        pft.dpo_batches(max_pairs=4, scale=1.0, betas=st.sampled_from([0.1, 1e-6])),
    )
)
def test_loss_metrics_and_gradient_equal_compute_dpo_loss(batch: tuple[np.ndarray, ...]) -> None:
    pc, pr, rc, rr, beta = batch
    ours = dpo_loss(pc, pr, rc, rr, beta)
    policy_c = torch.tensor(pc, dtype=torch.float64, requires_grad=True)
    policy_r = torch.tensor(pr, dtype=torch.float64, requires_grad=True)
    loss, metrics = _cookbook_loss(policy_c, policy_r, torch.tensor(rc), torch.tensor(rr), beta)
    assert ours.loss == pytest.approx(loss, rel=1e-12, abs=1e-15)
    assert set(ours.metrics.as_dict()) == set(metrics)
    for key, value in ours.metrics.as_dict().items():
        # the cookbook takes the accuracy's mean in float32 (0.6 -> 0.6000000238)
        tolerance = 1e-7 if key == "accuracy" else 1e-12
        assert value == pytest.approx(metrics[key], rel=tolerance, abs=tolerance), key
    np.testing.assert_allclose(ours.dloss_dchosen_B, policy_c.grad.numpy(), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(ours.dloss_drejected_B, policy_r.grad.numpy(), rtol=1e-10, atol=1e-300)


ragged_pairs = st.integers(1, 6).flatmap(
    lambda pairs: st.lists(
        st.integers(0, 10).flatmap(
            lambda n: st.tuples(
                st.lists(st.floats(-20, 0, width=32), min_size=n, max_size=n),
                st.lists(st.floats(-20, 0, width=32), min_size=n, max_size=n),
                st.lists(st.sampled_from([0.0, 1.0]), min_size=n, max_size=n),
            )
        ),
        min_size=2 * pairs,
        max_size=2 * pairs,
    )
)


@_SETTINGS
@given(ragged_pairs, st.floats(0.01, 1.0))
def test_token_gradients_equal_autograd_through_the_cookbook_loss_fn(
    sequences: list[tuple[list[float], list[float], list[float]]], beta: float
) -> None:
    policy = [np.asarray(lp, dtype=np.float32) for lp, _, _ in sequences]
    reference = [np.asarray(ref, dtype=np.float32) for _, ref, _ in sequences]
    weights = [np.asarray(w, dtype=np.float32) for _, _, w in sequences]
    # tinkerflow: sequence logprobs -> loss -> per-token gradients (chosen at even positions, as the cookbook pairs)
    seq_policy = sequence_logprobs(policy, weights)
    seq_reference = sequence_logprobs(reference, weights)
    ours = dpo_loss(seq_policy[0::2], seq_policy[1::2], seq_reference[0::2], seq_reference[1::2], beta)
    grads_c, grads_r = dpo_token_gradients(ours, weights[0::2], weights[1::2])
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
        # the cookbook's dpo_loss_fn: torch.dot(logprobs.float(), weights.float()) per datum, then compute_dpo_loss
        tokens = [torch.tensor(lp, dtype=dtype, requires_grad=True) for lp in policy]
        sums = [torch.dot(t, torch.tensor(w, dtype=dtype)) for t, w in zip(tokens, weights, strict=True)]
        refs = [
            torch.dot(torch.tensor(r, dtype=dtype), torch.tensor(w, dtype=dtype))
            for r, w in zip(reference, weights, strict=True)
        ]
        loss, _ = _cookbook_loss(sums[0::2], sums[1::2], refs[0::2], refs[1::2], beta)
        assert ours.loss == pytest.approx(loss, rel=tolerance, abs=tolerance)
        autograd = [t.grad.numpy() if t.grad is not None else np.zeros(len(t)) for t in tokens]
        for index, expected in enumerate(autograd):
            mine = (grads_c if index % 2 == 0 else grads_r)[index // 2]
            np.testing.assert_allclose(mine, expected, rtol=tolerance, atol=tolerance * beta)


# -- the datums ---------------------------------------------------------------------------------------------------


def _split(conversation: Conversation) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """(prompt, completion): the completion is the trailing run of assistant messages and tool results."""
    messages = conversation.messages
    start = len(messages)
    while start > 0 and messages[start - 1].role in COMPLETION_ROLES:
        start -= 1
    return messages[:start], messages[start:]


@st.composite
def _labeled(draw: st.DrawFn, family: Family) -> LabeledComparison:
    profile = attrs.evolve(family.profile, last_assistant=True, max_messages=5)
    first, second = draw(conversations(profile)), draw(conversations(profile))
    prompt, completion_a = _split(first)
    _, completion_b = _split(second)
    assume(prompt and completion_a and completion_b)
    try:
        comparison = Comparison(
            prompt=Conversation(messages=prompt, tools=first.tools),
            completion_a=completion_a,
            completion_b=completion_b,
        )
    except ValidationError:
        assume(False)
        raise
    return LabeledComparison(comparison=comparison, label=draw(st.sampled_from(["a", "b"])))


def _cookbook_comparison(reference: Any, labeled: LabeledComparison) -> Any:
    from tinker_cookbook.preference.types import Comparison as CookbookComparison
    from tinker_cookbook.preference.types import LabeledComparison as CookbookLabeled

    comparison = labeled.comparison
    return CookbookLabeled(
        comparison=CookbookComparison(
            prompt_conversation=cb.to_cookbook_messages(reference, comparison.prompt),
            completion_A=[cb.to_cookbook_message(m) for m in comparison.completion_a],
            completion_B=[cb.to_cookbook_message(m) for m in comparison.completion_b],
        ),
        label={"a": "A", "b": "B", "tie": "Tie"}[labeled.label],
    )


def _cookbook_dpo_batch(reference: Any, labeled: list[Any], max_length: int | None) -> list[Any]:
    """The cookbook's own DPO data path: DPODatasetBuilderFromComparisons over an in-memory dataset."""
    import chz
    import datasets
    from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
    from tinker_cookbook.preference.preference_datasets import ComparisonDatasetBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    @chz.chz
    class InMemory(ComparisonDatasetBuilder):
        def get_train_and_test_datasets(self) -> tuple[Any, None]:
            return datasets.Dataset.from_list([{"index": i} for i in range(len(labeled))]), None

        def example_to_labeled_comparison(self, example: dict[str, int]) -> Any:
            return labeled[example["index"]]

    config = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer="offline", renderer_name="offline", max_length=max_length, batch_size=len(labeled)
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DPODatasetBuilderFromComparisons, "renderer", property(lambda self: reference))
        train, _ = DPODatasetBuilderFromComparisons(comparison_builder=InMemory(), common_config=config)()
        return list(train.get_batch(0))


def _cookbook_turn_datums(reference: Any, labeled: LabeledComparison, max_length: int | None) -> list[Any]:
    """The cookbook's renderer in last_assistant_turn mode + its datum construction (reduction none)."""
    from tinker_cookbook.renderers import TrainOnWhat
    from tinker_cookbook.supervised.common import datum_from_model_input_weights

    chosen, rejected = labeled.chosen_rejected()
    result = []
    for completion in (chosen, rejected):
        conversation = attrs.evolve(
            labeled.comparison.prompt, messages=(*labeled.comparison.prompt.messages, *completion)
        )
        model_input, weights = reference.build_supervised_example(
            cb.to_cookbook_messages(reference, conversation), train_on_what=TrainOnWhat.LAST_ASSISTANT_TURN
        )
        result.append(datum_from_model_input_weights(model_input, weights, max_length, reduction="none"))
    return result


def _same(ours: Any, theirs: Any) -> None:
    mine = datum_to_tinker(ours)
    assert mine.model_input.to_ints() == theirs.model_input.to_ints()
    for key in ("target_tokens", "weights"):
        np.testing.assert_array_equal(mine.loss_fn_inputs[key].to_numpy(), theirs.loss_fn_inputs[key].to_numpy())


def _single(labeled: LabeledComparison) -> bool:
    return all(
        sum(m.role == "assistant" for m in side) == 1
        for side in (labeled.comparison.completion_a, labeled.comparison.completion_b)
    )


def _cookbook_datums(reference: Any, labeled: LabeledComparison, max_length: int | None) -> list[Any]:
    if _single(labeled):
        return _cookbook_dpo_batch(reference, [_cookbook_comparison(reference, labeled)], max_length)
    return _cookbook_turn_datums(reference, labeled, max_length)


def _check_family(family: Family, examples: int) -> dict[str, int]:
    renderer = family.renderer()
    reference = family.cookbook()
    seen = {"single": 0, "multi": 0, "refused": 0}

    @_settings(examples)
    @given(_labeled(family), st.one_of(st.none(), st.integers(8, 96)))
    def check(labeled: LabeledComparison, max_length: int | None) -> None:
        try:
            chosen, rejected = dpo_pairs([labeled], renderer, max_length=max_length).interleaved()
        except ValidationError as error:
            if error.field == "train_on":  # deliberate: no mode weights exactly this completion (docs/preferences.md)
                seen["refused"] += 1
                return
            with pytest.raises(Exception):  # noqa: B017, PT011  # the cookbook refuses too (its own exception types)
                _cookbook_datums(reference, labeled, max_length)
            return
        except TinkerflowError:
            with pytest.raises(Exception):  # noqa: B017, PT011  # the cookbook refuses too (its own exception types)
                _cookbook_datums(reference, labeled, max_length)
            return
        seen["single" if _single(labeled) else "multi"] += 1
        theirs = _cookbook_datums(reference, labeled, max_length)
        assert len(theirs) == 2
        _same(chosen, theirs[0])
        _same(rejected, theirs[1])

    check()
    assert seen["single"] > 0
    return seen


QUICK = [family for family in FAMILIES if (family.name, family.tokenizer) == ("llama3", "llama3")]


@pytest.mark.parametrize("family", QUICK, ids=[f"{f.name}[{f.tokenizer}]" for f in QUICK])
def test_dpo_datums_equal_the_cookbooks(family: Family) -> None:
    _check_family(family, QUICK_EXAMPLES)


@pytest.mark.conformance
@pytest.mark.parametrize("family", FAMILIES, ids=[f"{f.name}[{f.tokenizer}]" for f in FAMILIES])
def test_dpo_datums_equal_the_cookbooks_long(family: Family) -> None:
    seen = _check_family(family, LONG_EXAMPLES)
    if family.profile.tools:
        assert seen["multi"] > 0  # tool calls give multi-message completions: last_assistant_turn is exercised


def test_a_tie_is_b_preferred_in_the_cookbook_and_a_typed_choice_here() -> None:
    family = next(f for f in FAMILIES if f.name == "llama3")
    renderer, reference = family.renderer(), family.cookbook()
    prompt = Conversation(messages=(Message(role="user", content="Pick one."),))
    comparison = Comparison(
        prompt=prompt,
        completion_a=(Message(role="assistant", content="A"),),
        completion_b=(Message(role="assistant", content="B"),),
    )
    tie = LabeledComparison(comparison, "tie")
    theirs = _cookbook_dpo_batch(reference, [_cookbook_comparison(reference, tie)], None)
    as_b, _ = dpo_pairs([LabeledComparison(comparison, "b")], renderer).interleaved()
    _same(as_b, theirs[0])  # the cookbook silently trains "B over A" on a tie
    with pytest.raises(TieError):
        dpo_pairs([tie], renderer)
    assert len(dpo_pairs([tie], renderer, ties="drop")) == 0
