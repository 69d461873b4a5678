"""Hypothesis strategies for the preference records (needs ``hypothesis``; ``pip install 'tinkerflow[testing]'``).

Every strategy draws *valid* records::

    from hypothesis import given
    from tinkerflow.preference import testing as pft

    @given(pft.labeled_comparisons(ties=False))
    def test_my_pairing(labeled):
        ...

Strategies: :func:`completions`, :func:`prompts`, :func:`comparisons`, :func:`labeled_comparisons`,
:func:`dpo_batches` (the four sequence-logprob arrays and a beta for :func:`~tinkerflow.preference.dpo_loss`).
"""

from __future__ import annotations

from typing import TypedDict, Unpack

import attrs
import numpy as np
from hypothesis import strategies as st

from tinkerflow import testing as tft
from tinkerflow.chat import Conversation, Message
from tinkerflow.preference.records import Comparison, Label, LabeledComparison

__all__ = [
    "ChatOptions",
    "ComparisonOptions",
    "comparisons",
    "completions",
    "dpo_batches",
    "labeled_comparisons",
    "prompts",
]


class ChatOptions(TypedDict, total=False):
    """Keyword options shared by :func:`completions`, :func:`prompts` and :func:`comparisons`: ``tools`` (default
    False) allows tool calls and tool results, ``parts`` (True) part-list content, ``unparsed`` (False) unparsed
    tool calls."""

    tools: bool
    parts: bool
    unparsed: bool


@attrs.frozen(kw_only=True)
class _Chat:
    """:class:`ChatOptions` with their defaults filled in (the one place that states them)."""

    tools: bool = False
    parts: bool = True
    unparsed: bool = False

    def keep(self, message: Message) -> Message:
        """``message``, without unparsed tool calls unless ``unparsed`` (they have no place in the JSON chat
        format)."""
        if self.unparsed or not message.unparsed_tool_calls:
            return message
        return attrs.evolve(message, unparsed_tool_calls=())


@st.composite
def completions(draw: st.DrawFn, *, max_messages: int = 3, **options: Unpack[ChatOptions]) -> tuple[Message, ...]:
    """Valid completions: assistant messages, with tool results after an assistant's tool calls when ``tools``,
    starting and ending with an assistant message (``options``: :class:`ChatOptions`)."""
    chat = _Chat(**options)
    count = draw(st.integers(1, max(1, max_messages)))
    result: list[Message] = []
    for index in range(count):
        message = chat.keep(draw(tft.messages(roles=("assistant",), parts=chat.parts, tool_use=chat.tools)))
        result.append(message)
        if chat.tools and index < count - 1:
            result.extend(
                Message(role="tool", content=draw(tft.texts(max_size=12)), tool_call_id=call.id, name=call.name)
                for call in message.tool_calls
            )
    return tuple(result)


@st.composite
def prompts(
    draw: st.DrawFn, *, max_messages: int = 5, user_last: bool = True, **options: Unpack[ChatOptions]
) -> Conversation:
    """Chat-shaped prompt conversations (:func:`tinkerflow.testing.conversations`); with ``user_last`` (default)
    cut after their last user message (one is appended when there is none), the usual place a completion starts.
    ``options``: :class:`ChatOptions`."""
    chat = _Chat(**options)
    conversation = draw(tft.conversations(max_messages=max_messages, tools=chat.tools, parts=chat.parts))
    messages = tuple(chat.keep(message) for message in conversation.messages)
    if user_last:
        last_user = max((i for i, message in enumerate(messages) if message.role == "user"), default=-1)
        if last_user >= 0:
            messages = messages[: last_user + 1]
        else:
            messages = (*messages, draw(tft.messages(roles=("user",), parts=chat.parts, tool_use=False)))
    return Conversation(messages=messages, tools=conversation.tools)


@st.composite
def comparisons(
    draw: st.DrawFn,
    *,
    max_prompt_messages: int = 5,
    max_completion_messages: int = 3,
    user_last: bool = True,
    **options: Unpack[ChatOptions],
) -> Comparison:
    """Valid comparisons: a :func:`prompts` prompt and two :func:`completions`, both drawn with ``options``
    (:class:`ChatOptions`)."""
    prompt = draw(prompts(max_messages=max_prompt_messages, user_last=user_last, **options))
    side = completions(max_messages=max_completion_messages, **options)
    return Comparison(prompt=prompt, completion_a=draw(side), completion_b=draw(side))


class ComparisonOptions(ChatOptions, total=False):
    """Keyword options of :func:`comparisons` that :func:`labeled_comparisons` passes on (same defaults)."""

    max_prompt_messages: int
    max_completion_messages: int
    user_last: bool


@st.composite
def labeled_comparisons(
    draw: st.DrawFn, *, ties: bool = True, **options: Unpack[ComparisonOptions]
) -> LabeledComparison:
    """Valid labeled comparisons (``options`` as for :func:`comparisons`); ``ties=False`` draws only ``"a"`` and
    ``"b"``."""
    labels: list[Label] = ["a", "b", "tie"] if ties else ["a", "b"]
    comparison = draw(comparisons(**options))
    return LabeledComparison(comparison=comparison, label=draw(st.sampled_from(labels)))


@st.composite
def dpo_batches(
    draw: st.DrawFn,
    *,
    min_pairs: int = 1,
    max_pairs: int = 8,
    scale: float = 50.0,
    betas: st.SearchStrategy[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """``(policy_chosen_B, policy_rejected_B, ref_chosen_B, ref_rejected_B, beta)``: float64 sequence logprobs in
    ``[-scale, 0]`` and a beta in ``[0.01, 2]`` (or drawn from ``betas``)."""
    size = draw(st.integers(min_pairs, max_pairs))
    values = st.floats(-scale, 0.0, allow_nan=False, allow_infinity=False)
    arrays = [np.asarray(draw(st.lists(values, min_size=size, max_size=size)), dtype=np.float64) for _ in range(4)]
    beta = draw(betas if betas is not None else st.floats(0.01, 2.0))
    return arrays[0], arrays[1], arrays[2], arrays[3], beta
