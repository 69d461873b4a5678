"""Quickstart: the foundation's records end to end (until the SL main job lands, this is README command 1).

Builds a chat conversation and a supervised datum, shows the typed error a misaligned datum raises, round-trips
both through JSON, and converts the datum to the Tinker SDK's types and back, exactly.
"""

from __future__ import annotations

import attrs

from tinkerflow import Conversation, Datum, Message, ModelInput, ToolCall
from tinkerflow.errors import ShapeError
from tinkerflow.interop import datum_from_tinker, datum_to_tinker
from tinkerflow.serde import from_json, to_json


def main() -> None:
    conversation = Conversation(
        messages=(
            Message(role="user", content="What is 2 + 2?"),
            Message(role="assistant", content="", tool_calls=(ToolCall.create("calculator", {"expr": "2+2"}, "c1"),)),
            Message(role="tool", content="4", tool_call_id="c1"),
            Message(role="assistant", content="4."),
        )
    )
    assert from_json(to_json(conversation), Conversation) == conversation
    print(f"conversation of {len(conversation)} messages round-trips through JSON ({len(to_json(conversation))} chars)")

    # The cookbook's worked example: tokens [10..60], weights [0,0,1,1,1,1], shifted by one.
    datum = Datum(
        model_input=ModelInput.from_tokens([10, 20, 30, 40, 50]),
        target_tokens_T=[20, 30, 40, 50, 60],
        weights_T=[0, 1, 1, 1, 1],
    )
    sdk = datum_to_tinker(datum)
    print("tinker.types.Datum loss inputs:", {key: value.tolist() for key, value in sdk.loss_fn_inputs.items()})
    assert datum_from_tinker(sdk) == datum
    assert from_json(to_json(datum), Datum) == datum

    try:
        attrs.evolve(datum, weights_T=[1.0, 1.0])
    except ShapeError as error:
        print("a misaligned datum cannot be built:", error)


if __name__ == "__main__":
    main()
