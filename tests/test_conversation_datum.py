"""conversation_datum is a pipeline stage as it is, and equals tinker-cookbook's conversation_to_datum."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import assume, given, settings

from tinkerflow import Conversation, Message
from tinkerflow import testing as tft
from tinkerflow.interop import datum_to_tinker
from tinkerflow.pipeline import Pipeline, compose, length_filter, stage
from tinkerflow.render import get_renderer
from tinkerflow.supervised import conversation_datum
from tinkerflow.tokenizers import offline_tokenizer


@functools.cache
def _renderer():  # type: ignore[no-untyped-def]
    return get_renderer("llama3", offline_tokenizer("llama3"))


def test_conversation_datum_is_a_stage_in_a_pipeline() -> None:
    to_datum = stage(functools.partial(conversation_datum, renderer=_renderer(), max_length=64))
    conversations = [
        Conversation(messages=(Message(role="user", content=f"q{i}"), Message(role="assistant", content="a")))
        for i in range(10)
    ]
    pipeline = Pipeline.from_source(conversations).then(compose(to_datum, length_filter(max_tokens=64))).batch(4)
    batches = list(pipeline)
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert all(
        datum.weights_T is not None and np.isclose(datum.weights_T.sum(), 1.0) for batch in batches for datum in batch
    )
    assert "conversation_datum" in pipeline.describe()


@settings(max_examples=30)
@given(tft.conversations(tools=False, parts=False, max_messages=5))
def test_matches_cookbook_conversation_to_datum(conversation: Conversation) -> None:
    # special-token text in content is plain text here, a control token in the cookbook (a documented difference)
    assume(not any("<|" in message.text() for message in conversation.messages))
    cookbook_data = pytest.importorskip("tinker_cookbook.supervised.data")
    from tests.conformance._cookbook import cookbook_renderer, to_cookbook_messages

    reference_renderer = cookbook_renderer("llama3", "llama3")
    expected = cookbook_data.conversation_to_datum(
        to_cookbook_messages(reference_renderer, conversation), reference_renderer, 256
    )
    ours = datum_to_tinker(conversation_datum(conversation, renderer=_renderer(), max_length=256))
    assert ours.model_input.to_ints() == expected.model_input.to_ints()
    for key in ("target_tokens", "weights"):
        np.testing.assert_allclose(
            ours.loss_fn_inputs[key].to_numpy(), expected.loss_fn_inputs[key].to_numpy(), rtol=1e-6
        )
