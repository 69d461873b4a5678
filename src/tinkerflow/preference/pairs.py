"""DPO pairs, pure: labeled comparisons -> a chosen and a rejected datum each (0/1 weights on the completion).

:func:`dpo_pairs` renders a batch of comparisons (ties raised or dropped), :func:`comparison_datums` one; the
loss of the pairs is :mod:`tinkerflow.preference.dpo`, which re-exports these names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Final, Literal, TypeAlias, cast

import attrs

from tinkerflow._validate import require_type
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.preference.records import LabeledComparison, TieError
from tinkerflow.render import Renderer, TrainOnWhat, build_supervised_batch, build_supervised_example
from tinkerflow.supervised import supervised_datum

__all__ = ["DPOPairs", "DPOTrainOn", "EmptyBatchError", "TiePolicy", "comparison_datums", "dpo_pairs"]

TiePolicy: TypeAlias = Literal["raise", "drop"]
"""What :func:`dpo_pairs` does with a tied comparison: ``"raise"`` a :class:`~tinkerflow.preference.TieError`, or
``"drop"`` it and count it (``DPOPairs.dropped_ties``). The cookbook treats a tie as "b preferred"; neither choice
here trains on a preference nobody expressed."""

DPOTrainOn: TypeAlias = Literal["auto", "last_assistant_message", "last_assistant_turn"]
"""Which tokens of ``prompt + completion`` carry weight (the sequence whose logprob DPO compares).

* ``"last_assistant_message"``: the final message (the cookbook's DPO: ``build_supervised_example``'s default).
  Only valid when every completion has one assistant message.
* ``"last_assistant_turn"``: every assistant message after the last user message. Only valid when the prompt has
  no assistant message after its last user message (else those would be weighted too).
* ``"auto"``: ``last_assistant_message`` when each completion has one assistant message (identical to the cookbook),
  else ``last_assistant_turn``; either way exactly the completion's assistant messages are weighted.
"""

_MODES: Final[dict[str, TrainOnWhat]] = {
    "last_assistant_message": TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    "last_assistant_turn": TrainOnWhat.LAST_ASSISTANT_TURN,
}


class EmptyBatchError(ValidationError):
    """A DPO computation got no comparison (or no sequence) at all."""


@contextlib.contextmanager
def _naming(name: str, side: int) -> Iterator[None]:
    """Re-raise a validation error with the comparison and side prefixed to its field (same error type)."""
    try:
        yield
    except ValidationError as error:
        field = f"{name}.{('chosen', 'rejected')[side]}.{error.field}"
        raise type(error)(error.where, field, error.problem, error.fix) from error


def _resolve_train_on(labeled: LabeledComparison, train_on: DPOTrainOn, where: str, name: str) -> TrainOnWhat:
    comparison = labeled.comparison
    counts = {
        side: sum(message.role == "assistant" for message in completion)
        for side, completion in (("a", comparison.completion_a), ("b", comparison.completion_b))
    }
    if train_on == "auto":
        train_on = "last_assistant_message" if max(counts.values()) == 1 else "last_assistant_turn"
    if train_on == "last_assistant_message":
        for side, count in counts.items():
            if count > 1:
                raise ValidationError(
                    where,
                    "train_on",
                    f"'last_assistant_message' would weight only the last of the {count} assistant messages of "
                    f"{name}.comparison.completion_{side}.",
                    "use train_on='auto' or 'last_assistant_turn'.",
                )
    elif train_on == "last_assistant_turn":
        messages = comparison.prompt.messages
        last_user = max((index for index, message in enumerate(messages) if message.role == "user"), default=-1)
        if any(message.role == "assistant" for message in messages[last_user + 1 :]):
            raise ValidationError(
                where,
                "train_on",
                f"'last_assistant_turn' would also weight the assistant messages of {name}.comparison.prompt after its "
                "last user message.",
                "end the prompt with a user message, or use one-message completions (train_on='auto').",
            )
    else:
        raise ConfigError(
            where,
            "train_on",
            f"unknown mode {train_on!r}.",
            "use 'auto', 'last_assistant_message' or 'last_assistant_turn'.",
        )
    return _MODES[train_on]


def comparison_datums(
    labeled: LabeledComparison,
    renderer: Renderer,
    max_length: int | None = None,
    *,
    train_on: DPOTrainOn = "auto",
) -> tuple[Datum, Datum]:
    """The ``(chosen, rejected)`` datums of a labeled comparison, as the cookbook's DPO dataset builds them.

    Each of ``prompt + chosen`` and ``prompt + rejected`` is rendered with ``train_on`` weights
    (:data:`DPOTrainOn`), then shifted and cut to ``max_length`` by :func:`tinkerflow.supervised.supervised_datum`
    with ``reduction="none"``: raw 0/1 weights, so a sequence logprob is a token *sum* (no length normalization).

    Raises:
        TieError: the label is ``"tie"`` (see :func:`dpo_pairs` to drop ties).
        ValidationError: ``train_on`` cannot weight exactly the completions, or a rendered sequence is too short.
        RenderError: the renderer cannot write a message.
    """
    require_type(labeled, LabeledComparison, "comparison_datums", "labeled")
    pairs = _pairs((labeled,), renderer, max_length, "raise", train_on, "comparison_datums")
    return pairs.chosen[0], pairs.rejected[0]


def _tuple(value: object) -> object:
    return tuple(cast("list[object]", value)) if isinstance(value, list) else value


@attrs.frozen
class DPOPairs:
    """Chosen and rejected datums of a batch of comparisons, pair ``i`` from input comparison ``indices[i]``.

    Attributes:
        chosen / rejected: one datum each per pair (``reduction="none"`` weights).
        indices: the position in the input sequence of each pair's comparison (ties dropped leave gaps).
        dropped_ties: how many tied comparisons ``ties="drop"`` left out.
    """

    chosen: tuple[Datum, ...] = attrs.field(converter=_tuple)
    rejected: tuple[Datum, ...] = attrs.field(converter=_tuple)
    indices: tuple[int, ...] = attrs.field(converter=_tuple)
    dropped_ties: int = 0

    def __attrs_post_init__(self) -> None:
        where = "DPOPairs"
        for name in ("chosen", "rejected", "indices"):
            require_type(getattr(self, name), tuple, where, name)
        for name in ("chosen", "rejected"):
            for index, datum in enumerate(getattr(self, name)):
                require_type(datum, Datum, where, f"{name}[{index}]")
        for index, position in enumerate(self.indices):
            require_type(position, int, where, f"indices[{index}]")
            if position < 0:
                raise ValidationError(where, f"indices[{index}]", f"must be >= 0, got {position}.")
        if not len(self.chosen) == len(self.rejected) == len(self.indices):
            raise ShapeError(
                where,
                "rejected",
                f"{len(self.chosen)} chosen, {len(self.rejected)} rejected and {len(self.indices)} indices.",
                "give one chosen datum, one rejected datum and one index per pair.",
            )
        require_type(self.dropped_ties, int, where, "dropped_ties")
        if self.dropped_ties < 0:
            raise ValidationError(where, "dropped_ties", f"must be >= 0, got {self.dropped_ties}.")

    def __len__(self) -> int:
        return len(self.chosen)

    def interleaved(self) -> tuple[Datum, ...]:
        """``(chosen_0, rejected_0, chosen_1, rejected_1, ...)``: the order of the cookbook's DPO batches."""
        return tuple(datum for pair in zip(self.chosen, self.rejected, strict=True) for datum in pair)


def dpo_pairs(
    labeled: Sequence[LabeledComparison],
    renderer: Renderer,
    *,
    max_length: int | None = None,
    ties: TiePolicy = "raise",
    train_on: DPOTrainOn = "auto",
) -> DPOPairs:
    """:func:`comparison_datums` of every comparison, ties handled by ``ties`` (:data:`TiePolicy`).

    Every conversation is rendered in one batched tokenizer call per train-on mode. The result may hold no pair
    (every comparison was a dropped tie): check ``len(pairs)`` before a step.

    Raises:
        EmptyBatchError: ``labeled`` is empty.
        TieError: a tie with ``ties="raise"``.
    """
    return _pairs(labeled, renderer, max_length, ties, train_on, "dpo_pairs")


def _pairs(
    labeled: Sequence[LabeledComparison],
    renderer: Renderer,
    max_length: int | None,
    ties: TiePolicy,
    train_on: DPOTrainOn,
    where: str,
) -> DPOPairs:
    def name(index: int) -> str:  # how errors name a comparison
        return "labeled" if where == "comparison_datums" else f"labeled[{index}]"

    if ties not in ("raise", "drop"):
        raise ConfigError(where, "ties", f"must be 'raise' or 'drop', got {ties!r}.")
    if len(labeled) == 0:
        raise EmptyBatchError(where, "labeled", "is empty.", "pass at least one labeled comparison.")
    kept: list[int] = []
    groups: dict[TrainOnWhat, list[int]] = {}
    for index, item in enumerate(labeled):
        require_type(item, LabeledComparison, where, name(index))
        if item.is_tie:
            if ties == "raise":
                raise TieError(
                    where,
                    f"{name(index)}.label",
                    "is 'tie': a tied comparison has no chosen and rejected completion.",
                    "pass ties='drop' to leave ties out (they are counted), or relabel the row.",
                )
            continue
        kept.append(index)
        groups.setdefault(_resolve_train_on(item, train_on, where, name(index)), []).append(index)
    chosen: dict[int, Datum] = {}
    rejected: dict[int, Datum] = {}
    for mode, members in groups.items():
        conversations = [
            attrs.evolve(labeled[index].comparison.prompt, messages=(*labeled[index].comparison.prompt.messages, *side))
            for index in members
            for side in labeled[index].chosen_rejected()
        ]
        try:
            examples = build_supervised_batch(renderer, conversations, mode)
        except ValidationError:
            for position, conversation in enumerate(conversations):  # find the comparison to name it
                with _naming(name(members[position // 2]), position % 2):
                    build_supervised_example(renderer, conversation, mode)
            raise
        for position, index in enumerate(members):
            for side in (0, 1):
                example = examples[2 * position + side]
                with _naming(name(index), side):
                    datum = supervised_datum(
                        example.model_input, example.weights_T, max_length=max_length, reduction="none"
                    )
                (chosen, rejected)[side][index] = datum
    return DPOPairs(
        chosen=tuple(chosen[index] for index in kept),
        rejected=tuple(rejected[index] for index in kept),
        indices=tuple(kept),
        dropped_ties=len(labeled) - len(kept),
    )
