"""Provenance spans as records: validation of spans and of their tiling on ``Datum``, JSON round trips (tagged
union), the SDK form ``TinkerBackend`` sends, and ``Transition``'s sequence id and parse-error flag."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow import serde
from tinkerflow.datum import Datum, PromptSpan, ProvenanceSpan, SampledSpan
from tinkerflow.errors import ShapeError, ValidationError
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.types import PARSE_ERROR_MASKED_METRIC_KEY, StepResult, Transition
from tinkerflow.sampling import SampledSequence
from tinkerflow.serde import RecordDataError

tt = pytest.importorskip("tinker.types")

from tinkerflow.shell.backends.tinker import sdk_datum  # noqa: E402


def _datum(**spans: object) -> Datum:
    return Datum(model_input=ModelInput.from_tokens([1, 2, 3]), target_tokens_T=[2, 3, 4], **spans)  # type: ignore[arg-type]


GOOD_INPUT = (PromptSpan(sequence_id="a", length=2), SampledSpan(sequence_id="a", length=1))
GOOD_TARGETS = (PromptSpan(sequence_id="a", offset=1, length=1), SampledSpan(sequence_id="a", length=2))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: PromptSpan(sequence_id="", length=1), "sequence_id"),
        (lambda: SampledSpan(sequence_id="a", length=-1), "length"),
        (lambda: SampledSpan(sequence_id="a", length=1, offset=-2), "offset"),
        (lambda: PromptSpan(sequence_id="a", length=True), "length"),
        (lambda: PromptSpan(sequence_id=3, length=1), "sequence_id"),
        (lambda: _datum(model_input_spans=GOOD_INPUT), "loss_fn_input_spans"),
        (lambda: _datum(loss_fn_input_spans=GOOD_TARGETS), "model_input_spans"),
        (lambda: _datum(model_input_spans=GOOD_INPUT[:1], loss_fn_input_spans=GOOD_TARGETS), "model_input_spans"),
        (lambda: _datum(model_input_spans=GOOD_INPUT, loss_fn_input_spans=GOOD_TARGETS[1:]), "loss_fn_input_spans"),
        (lambda: _datum(model_input_spans=("x",), loss_fn_input_spans=GOOD_TARGETS), "model_input_spans[0]"),
        (lambda: _datum(model_input_spans="ab", loss_fn_input_spans=GOOD_TARGETS), "model_input_spans"),
    ],
)
def test_bad_spans_are_typed_errors(make: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.field == field


def test_untiled_spans_are_shape_errors() -> None:
    with pytest.raises(ShapeError, match="covers 2 positions but the datum has 3"):
        _datum(model_input_spans=GOOD_INPUT[:1], loss_fn_input_spans=GOOD_TARGETS)


def test_spans_are_kept_by_evolve_and_checked_again() -> None:
    datum = _datum(model_input_spans=GOOD_INPUT, loss_fn_input_spans=GOOD_TARGETS)
    assert datum.has_provenance
    assert attrs.evolve(datum, advantages_T=[0.0, 1.0, 1.0]).loss_fn_input_spans == GOOD_TARGETS
    with pytest.raises(ShapeError):
        attrs.evolve(datum, model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 3])
    assert PromptSpan(sequence_id="a", length=1) != SampledSpan(sequence_id="a", length=1)


_SPAN = st.builds(
    lambda kind, sid, offset, length: kind(sequence_id=sid, offset=offset, length=length),
    st.sampled_from([PromptSpan, SampledSpan]),
    st.text(min_size=1, max_size=8),
    st.integers(0, 1000),
    st.integers(0, 5),
)


@given(st.lists(_SPAN, min_size=1, max_size=6), st.lists(_SPAN, min_size=1, max_size=6))
def test_spans_round_trip_through_json_and_reach_the_sdk(
    inputs: list[ProvenanceSpan], targets: list[ProvenanceSpan]
) -> None:
    length = sum(span.length for span in inputs)
    pad = length - sum(span.length for span in targets)
    if pad < 0:
        inputs, pad = [*inputs, SampledSpan(sequence_id="pad", length=-pad)], 0
        length = sum(span.length for span in inputs)
    targets = [*targets, PromptSpan(sequence_id="pad", length=pad)]
    if length == 0:
        return
    datum = Datum(
        model_input=ModelInput.from_tokens(np.arange(length)),
        target_tokens_T=np.arange(1, length + 1),
        model_input_spans=inputs,
        loss_fn_input_spans=targets,
    )
    assert serde.from_json(serde.to_json(datum), Datum) == datum
    sent = sdk_datum(datum)
    kinds = {PromptSpan: tt.PromptProvenanceSpan, SampledSpan: tt.SampledProvenanceSpan}
    for ours, theirs in ((inputs, sent.model_input_spans), (targets, sent.loss_fn_input_spans)):
        assert theirs == [kinds[type(s)](sequence_id=s.sequence_id, offset=s.offset, length=s.length) for s in ours]


def test_json_without_spans_reads_as_none_and_unknown_span_tags_are_refused() -> None:
    plain = serde.to_json(_datum())
    assert serde.from_json(plain, Datum).model_input_spans is None
    with_spans = serde.to_json(_datum(model_input_spans=GOOD_INPUT, loss_fn_input_spans=GOOD_TARGETS))
    with pytest.raises(RecordDataError):
        serde.from_json(with_spans.replace('"type": "sampled"', '"type": "image"', 1), Datum)
    assert sdk_datum(_datum()).model_input_spans is None


def test_transition_takes_the_sequence_id_and_the_cookbooks_flag() -> None:
    action = SampledSequence(tokens_T=[5], stop_reason="stop", logprobs_T=[-0.5], sequence_id="seq-7")
    result = StepResult(reward=0.0, done=True, metrics={PARSE_ERROR_MASKED_METRIC_KEY: 1.0})
    transition = Transition.from_sample(ModelInput.from_tokens([1]), action, result)
    assert transition.sequence_id == "seq-7"
    assert transition.mask_turn  # the metric masks the turn, as in the cookbook
    assert serde.from_json(serde.to_json(transition), Transition) == transition
    unmasked = StepResult(reward=0.0, done=True, metrics={PARSE_ERROR_MASKED_METRIC_KEY: 0.5})
    assert not Transition.from_sample(ModelInput.from_tokens([1]), action, unmasked).mask_turn
    with pytest.raises(ValidationError) as caught:
        Transition(ModelInput.from_tokens([1]), [5], [-0.5], 0.0, True, sequence_id=None)  # type: ignore[arg-type]
    assert caught.value.field == "sequence_id"


class _SentFuture:
    def __init__(self, value: object) -> None:
        import concurrent.futures

        self._future: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._future.set_result(value)

    def result(self, timeout: float | None = None) -> object:
        return self._future.result(timeout)

    def future(self) -> object:
        return self._future


class _RecordingSDK:
    """A fake SDK training client that keeps what ``forward_backward`` was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[object], str, object]] = []

    def forward_backward(self, data: list[object], loss_fn: str, loss_fn_config: object = None) -> _SentFuture:
        self.sent.append((data, loss_fn, loss_fn_config))
        outputs = [{"logprobs": tt.TensorData.from_numpy(np.full(3, -1.0, dtype=np.float32))} for _ in data]
        return _SentFuture(tt.ForwardBackwardOutput(loss_fn_output_type="x", loss_fn_outputs=outputs, metrics={}))


def test_tinker_training_client_sends_spans_and_refuses_stable_reinforce_without_them() -> None:
    from tinkerflow.shell.backends.tinker import TinkerTrainingClient

    sdk = _RecordingSDK()
    client = TinkerTrainingClient(sdk)
    datum = Datum(
        model_input=ModelInput.from_tokens([1, 2, 3]),
        target_tokens_T=[2, 3, 4],
        logprobs_T=[0.0, -0.5, -0.5],
        advantages_T=[0.0, 1.0, 1.0],
        model_input_spans=GOOD_INPUT,
        loss_fn_input_spans=GOOD_TARGETS,
    )
    client.forward_backward([datum], "stable_reinforce", {"kl_coeff": 0.01}).result()
    ((sent, name, config),) = sdk.sent
    assert name == "stable_reinforce"
    assert config == {"kl_coeff": 0.01}
    assert sent[0].loss_fn_input_spans == [  # type: ignore[attr-defined]
        tt.PromptProvenanceSpan(sequence_id="a", offset=1, length=1),
        tt.SampledProvenanceSpan(sequence_id="a", length=2),
    ]
    with pytest.raises(ValidationError) as caught:  # checked before anything is sent
        client.forward_backward(
            [attrs.evolve(datum, model_input_spans=None, loss_fn_input_spans=None)], "stable_reinforce"
        )
    assert caught.value.field == "data[0].loss_fn_input_spans"
    assert len(sdk.sent) == 1
