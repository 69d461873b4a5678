"""Preference records: a comparison of two completions of one prompt, and a labeled comparison. Pure.

A :class:`Comparison` holds a prompt conversation and two candidate completions (``a`` and ``b``); a
:class:`LabeledComparison` says which one is preferred (``"a"``, ``"b"``) or that neither is (``"tie"``). They play
the roles of tinker-cookbook's ``Comparison`` / ``LabeledComparison`` (``completion_A``/``completion_B``, labels
``"A"``/``"B"``/``"Tie"``), with lower-case names, validation on construction, and ties made explicit: the cookbook
silently treats a tie as "B preferred" when it builds DPO pairs, :meth:`LabeledComparison.chosen_rejected` raises.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, cast

import attrs

from tinkerflow._validate import require_type
from tinkerflow.chat import Conversation, Message
from tinkerflow.errors import ValidationError

__all__ = ["COMPLETION_ROLES", "LABELS", "Comparison", "Label", "LabeledComparison", "TieError", "no_preference"]

Label: TypeAlias = Literal["a", "b", "tie"]
LABELS: Final[tuple[Label, ...]] = ("a", "b", "tie")

#: Roles a completion may hold: the model's messages and, between them, results of the tools it called.
COMPLETION_ROLES: Final[frozenset[str]] = frozenset({"assistant", "tool"})

_SWAPPED_LABEL: Final[dict[str, Label]] = {"a": "b", "b": "a", "tie": "tie"}


class TieError(ValidationError):
    """A tied comparison was asked for a chosen and a rejected completion (it has neither)."""


def _messages_tuple(value: object) -> object:
    return tuple(cast("list[object]", value)) if isinstance(value, list) else value


def _check_completion(value: object, field: str) -> None:
    where = "Comparison"
    require_type(value, tuple, where, field)
    completion = cast("tuple[object, ...]", value)
    if not completion:
        raise ValidationError(where, field, "is empty.", "a completion needs at least one assistant message.")
    for index, message in enumerate(completion):
        require_type(message, Message, where, f"{field}[{index}]")
        role = cast("Message", message).role
        if role not in COMPLETION_ROLES:
            raise ValidationError(
                where,
                f"{field}[{index}].role",
                f"a completion holds only assistant messages and tool results, got a {role!r} message.",
                "move earlier turns into the prompt.",
            )
    for index in (0, len(completion) - 1):
        if cast("Message", completion[index]).role != "assistant":
            position = "start" if index == 0 else "end"
            raise ValidationError(
                where,
                f"{field}[{index}].role",
                f"a completion must {position} with an assistant message, got a tool result.",
                "a completion is what the model wrote; tool results only sit between its messages.",
            )


@attrs.frozen
class Comparison:
    """A prompt and two candidate completions of it.

    Attributes:
        prompt: the conversation both completions answer (its ``tools`` are offered to both).
        completion_a / completion_b: non-empty tuples of messages that start and end with an assistant message;
            between assistant messages only ``tool`` results may appear (no user or system turns).
    """

    prompt: Conversation
    completion_a: tuple[Message, ...] = attrs.field(converter=_messages_tuple)
    completion_b: tuple[Message, ...] = attrs.field(converter=_messages_tuple)

    def __attrs_post_init__(self) -> None:
        require_type(self.prompt, Conversation, "Comparison", "prompt")
        _check_completion(self.completion_a, "completion_a")
        _check_completion(self.completion_b, "completion_b")

    def swapped(self) -> Comparison:
        """The same comparison with ``a`` and ``b`` exchanged."""
        return Comparison(prompt=self.prompt, completion_a=self.completion_b, completion_b=self.completion_a)

    def completion(self, which: Literal["a", "b"]) -> tuple[Message, ...]:
        """Completion ``a`` or ``b``."""
        if which == "a":
            return self.completion_a
        if which == "b":
            return self.completion_b
        raise ValidationError("Comparison.completion", "which", f"must be 'a' or 'b', got {which!r}.")

    def conversation(self, which: Literal["a", "b"]) -> Conversation:
        """The prompt followed by completion ``which``, with the prompt's tools."""
        return Conversation(messages=(*self.prompt.messages, *self.completion(which)), tools=self.prompt.tools)


@attrs.frozen
class LabeledComparison:
    """A comparison and which completion is preferred: ``"a"``, ``"b"`` or ``"tie"`` (neither)."""

    comparison: Comparison
    label: Label

    def __attrs_post_init__(self) -> None:
        require_type(self.comparison, Comparison, "LabeledComparison", "comparison")
        if self.label not in LABELS:
            raise ValidationError(
                "LabeledComparison",
                "label",
                f"must be 'a', 'b' or 'tie', got {self.label!r}.",
                "label the preferred completion (cookbook spellings 'A'/'B'/'Tie' are read by the data loaders).",
            )

    @property
    def is_tie(self) -> bool:
        return self.label == "tie"

    def swapped(self) -> LabeledComparison:
        """``a`` and ``b`` exchanged and the label flipped with them (a tie stays a tie): the same preference."""
        return LabeledComparison(comparison=self.comparison.swapped(), label=_SWAPPED_LABEL[self.label])

    def chosen_rejected(self) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
        """``(chosen, rejected)`` completions.

        Raises:
            TieError: the label is ``"tie"``; drop ties first (``tinkerflow.preference.dpo_pairs(ties="drop")``).
        """
        if self.label == "tie":
            raise TieError(
                "LabeledComparison",
                "label",
                "is 'tie': a tied comparison has no chosen and rejected completion.",
                "drop ties before pairing (e.g. dpo_pairs(..., ties='drop')), or relabel the row.",
            )
        if self.label == "a":
            return self.comparison.completion_a, self.comparison.completion_b
        return self.comparison.completion_b, self.comparison.completion_a


def _says_something(message: Message) -> bool:
    return bool(
        message.text().strip()
        or (message.thinking() or "").strip()
        or message.images()
        or message.tool_calls
        or message.unparsed_tool_calls
    )


def no_preference(comparison: Comparison) -> tuple[Literal["completion_a", "completion_b"], str, str] | None:
    """Why ``comparison`` cannot express a preference, as ``(field, problem, fix)``, or ``None`` when it can.

    A completion is empty when none of its messages holds text (whitespace aside), thinking, an image or a tool call;
    two identical completions are no choice either. The records allow both (a tie may be labelled on them); the data
    readers and the DPO data refuse them.
    """
    sides: tuple[tuple[Literal["completion_a", "completion_b"], tuple[Message, ...]], ...] = (
        ("completion_a", comparison.completion_a),
        ("completion_b", comparison.completion_b),
    )
    for name, completion in sides:
        if not any(_says_something(message) for message in completion):
            return (
                name,
                "is empty: no text, thinking, image or tool call in any of its messages.",
                "give the completion's text, or drop the row.",
            )
    if comparison.completion_a == comparison.completion_b:
        return (
            "completion_b",
            "is identical to the other completion: the pair expresses no preference.",
            "give two different completions, or drop the row.",
        )
    return None
