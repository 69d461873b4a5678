"""Trajectories -> training datums (sequence extension), and a batch of them keyed by trajectory and group id.

Pure (numpy only). Matches tinker-cookbook 0.6.1's ``trajectory_to_data`` / ``assemble_training_data`` array for
array (``tests/test_rl_cookbook.py`` proves it on hypothesis-generated trajectories):

* Walk the transitions. While the sequence built so far is a prefix of the next observation, append only the new
  observation positions; otherwise emit a datum and start a new sequence with the whole observation. Then append
  the action tokens. The prefix test compares flat sequences where each token is one element and each image chunk
  is one element (equal images compare equal), exactly as the cookbook's flat observations.
* Observation positions get logprob 0, advantage 0, mask 0; action tokens get their sampling logprobs, the
  trajectory's advantage and mask 1, except on turns with ``mask_turn`` (parse errors), which get advantage 0 and
  mask 0 (the cookbook's ``parse_error_masked`` metric).
* Each sequence is shifted by one: input = sequence[:-1], targets = sequence[1:] (image positions target 0), and the
  per-position arrays drop their first entry.

Provenance (the cookbook's ``include_provenance=True``, also tinkerflow's default): while every transition of a
sequence that adds positions has a ``sequence_id``, each transition adds a :class:`~tinkerflow.datum.PromptSpan`
for its new observation positions (their offset in that request's prompt is the sequence's length so far) and a
:class:`~tinkerflow.datum.SampledSpan` for its action; the datum's input spans drop the last position, its target
spans the first. A datum gets spans only if every such transition had an id and a sampled token is a target.

The arrays are built with ``np.concatenate`` / slice fills per transition, never per token.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs
import numpy as np

from tinkerflow._validate import finite_float, require_type, str_tuple
from tinkerflow.datum import Datum, PromptSpan, ProvenanceSpan, SampledSpan
from tinkerflow.errors import ShapeError, ValidationError
from tinkerflow.model_input import Chunk, ImageChunk, ModelInput, TokenChunk
from tinkerflow.rl.advantages import AdvantageResult
from tinkerflow.rl.types import Trajectory, TrajectoryGroup, unique_groups

__all__ = ["RLBatch", "assemble_batch", "trajectory_datums"]

_EMPTY_CODES = np.zeros(0, dtype=np.int64)


def _datum_tuple(value: Iterable[Datum]) -> tuple[Datum, ...]:
    return tuple(value)


@attrs.frozen
class RLBatch:
    """Training datums with, for each, the id of the trajectory and of the group it came from.

    ``datums[d]`` came from trajectory ``trajectory_ids_D[d]`` of group ``group_ids_D[d]``; a multi-turn trajectory
    whose sequence was not extended turn over turn gives several consecutive datums with the same ids.
    """

    datums: tuple[Datum, ...] = attrs.field(converter=_datum_tuple)
    trajectory_ids_D: tuple[str, ...] = attrs.field(converter=str_tuple)
    group_ids_D: tuple[str, ...] = attrs.field(converter=str_tuple)

    def __attrs_post_init__(self) -> None:
        where = "RLBatch"
        size = len(self.datums)
        for name in ("trajectory_ids_D", "group_ids_D"):
            value: tuple[str, ...] = getattr(self, name)
            if len(value) != size:
                raise ShapeError(where, name, f"has {len(value)} entries for {size} datums.", "give one per datum.")
        for index, datum in enumerate(self.datums):
            if not isinstance(datum, Datum):
                require_type(datum, Datum, where, f"datums[{index}]")  # raises, naming the type

    @property
    def size(self) -> int:
        """Number of datums."""
        return len(self.datums)

    @property
    def is_empty(self) -> bool:
        return not self.datums

    def datums_of(self, trajectory_id: str) -> tuple[Datum, ...]:
        """The datums of one trajectory, in order."""
        return tuple(d for d, t in zip(self.datums, self.trajectory_ids_D, strict=True) if t == trajectory_id)


class _Images:
    """Interns the image chunks of one trajectory: equal images get the same negative code (-1, -2, ...)."""

    __slots__ = ("chunks", "codes", "lengths")

    def __init__(self) -> None:
        self.codes: dict[ImageChunk, int] = {}
        self.chunks: list[ImageChunk] = []
        self.lengths: list[int] = []

    def code(self, chunk: ImageChunk) -> int:
        found = self.codes.get(chunk)
        if found is None:
            found = -(len(self.chunks) + 1)
            self.codes[chunk] = found
            self.chunks.append(chunk)
            self.lengths.append(chunk.expected_tokens)
        return found


def _flat_codes(observation: ModelInput, images: _Images) -> tuple[np.ndarray, bool]:
    """One element per token (its id) and per image chunk (its negative code); whether an image is present."""
    chunks = observation.chunks
    if len(chunks) == 1 and isinstance(chunks[0], TokenChunk):
        return chunks[0].tokens_T, False
    pieces: list[np.ndarray] = []
    has_image = False
    for chunk in chunks:
        if isinstance(chunk, TokenChunk):
            pieces.append(chunk.tokens_T)
        else:
            has_image = True
            pieces.append(np.array([images.code(chunk)], dtype=np.int64))
    if not pieces:
        return _EMPTY_CODES, False
    return np.concatenate(pieces), has_image


def _image_positions(codes: np.ndarray, images: _Images) -> np.ndarray:
    """Positions occupied by each flat element (1 per token, ``expected_tokens`` per image)."""
    lengths = np.asarray(images.lengths, dtype=np.int64)
    return np.where(codes < 0, lengths[np.maximum(-codes - 1, 0)], 1)


def _chunks_of(codes: np.ndarray, images: _Images) -> tuple[Chunk, ...]:
    """Flat codes back to chunks: runs of tokens become one token chunk each, images their chunk."""
    chunks: list[Chunk] = []
    start = 0
    for index in np.flatnonzero(codes < 0).tolist():
        if index > start:
            chunks.append(TokenChunk(tokens_T=codes[start:index]))
        chunks.append(images.chunks[-int(codes[index]) - 1])
        start = index + 1
    if start < codes.shape[0]:
        chunks.append(TokenChunk(tokens_T=codes[start:]))
    return tuple(chunks)


# (new observation codes, action tokens, action logprobs, masked) of one transition within a sequence.
_Segment = tuple[np.ndarray, np.ndarray, np.ndarray, bool]

_DATUM_FIELDS = frozenset(field.name for field in attrs.fields(Datum))
_TRUSTED = (
    {
        "model_input",
        "target_tokens_T",
        "weights_T",
        "logprobs_T",
        "advantages_T",
        "mask_T",
        "sequence_ratio_mask_T",
        "model_input_spans",
        "loss_fn_input_spans",
    }
    == _DATUM_FIELDS
    and {field.name for field in attrs.fields(TokenChunk)} == {"tokens_T"}
    and {field.name for field in attrs.fields(ModelInput)} == {"chunks"}
)


def _trusted_token_input(tokens_T: np.ndarray) -> ModelInput:
    """A model input of one token chunk of a fresh read-only int64 array of valid ids (no copy, no check)."""
    if not _TRUSTED:
        return ModelInput(chunks=(TokenChunk(tokens_T=tokens_T),))
    chunk = object.__new__(TokenChunk)
    object.__setattr__(chunk, "tokens_T", tokens_T)
    model_input = object.__new__(ModelInput)
    object.__setattr__(model_input, "chunks", (chunk,))
    return model_input


def _trusted_datum(
    model_input: ModelInput,
    target_tokens_T: np.ndarray,
    *,
    weights_T: np.ndarray | None = None,
    logprobs_T: np.ndarray | None = None,
    advantages_T: np.ndarray | None = None,
    mask_T: np.ndarray | None = None,
    sequence_ratio_mask_T: np.ndarray | None = None,
    model_input_spans: tuple[ProvenanceSpan, ...] | None = None,
    loss_fn_input_spans: tuple[ProvenanceSpan, ...] | None = None,
) -> Datum:
    """A datum from read-only arrays that satisfy every ``Datum`` invariant by construction (no copy, no check).

    For the RL package only. The assembly builds its arrays from validated records (token ids >= 0 from token
    chunks and transitions, finite float32 logprobs from transitions, a finite advantage, a 0/1 mask) with lengths
    it computed, and :func:`~tinkerflow.rl.loss_inputs.loss_datums` reuses the arrays of validated datums; checking
    and copying them again per datum would be most of the cost of assembly. If ``Datum``'s fields ever change,
    this falls back to the validating constructor. Spans must tile the datum (the assembly builds them so).
    """
    if not _TRUSTED:
        return Datum(
            model_input=model_input,
            target_tokens_T=target_tokens_T,
            weights_T=weights_T,
            logprobs_T=logprobs_T,
            advantages_T=advantages_T,
            mask_T=mask_T,
            sequence_ratio_mask_T=sequence_ratio_mask_T,
            model_input_spans=model_input_spans,
            loss_fn_input_spans=loss_fn_input_spans,
        )
    fields: dict[str, object] = {
        "target_tokens_T": target_tokens_T,
        "weights_T": weights_T,
        "logprobs_T": logprobs_T,
        "advantages_T": advantages_T,
        "mask_T": mask_T,
        "sequence_ratio_mask_T": sequence_ratio_mask_T,
        "model_input_spans": model_input_spans,
        "loss_fn_input_spans": loss_fn_input_spans,
    }
    datum = object.__new__(Datum)
    setter = object.__setattr__
    setter(datum, "model_input", model_input)
    for name, value in fields.items():
        setter(datum, name, value)
    return datum


def _without_first(spans: list[ProvenanceSpan]) -> tuple[ProvenanceSpan, ...]:
    """The spans of the same positions less the first one."""
    first = spans[0]
    if first.length == 1:
        return tuple(spans[1:])
    return (_trusted_span(type(first), first.sequence_id, first.offset + 1, first.length - 1), *spans[1:])


def _without_last(spans: list[ProvenanceSpan]) -> tuple[ProvenanceSpan, ...]:
    """The spans of the same positions less the last one."""
    last = spans[-1]
    if last.length == 1:
        return tuple(spans[:-1])
    return (*spans[:-1], _trusted_span(type(last), last.sequence_id, last.offset, last.length - 1))


def _provenance(
    spans: list[ProvenanceSpan] | None,
) -> tuple[tuple[ProvenanceSpan, ...] | None, tuple[ProvenanceSpan, ...] | None]:
    """(input spans, target spans) of a sequence tiled by ``spans``; ``(None, None)`` when there are none or no
    target is a sampled token."""
    if not spans:
        return None, None
    targets = _without_first(spans)
    if not any(isinstance(span, SampledSpan) for span in targets):
        return None, None
    return _without_last(spans), targets


def _make_datum(
    codes: np.ndarray,
    segments: list[_Segment],
    has_image: bool,
    images: _Images,
    advantage: np.float32,
    spans: list[ProvenanceSpan] | None,
) -> Datum:
    """The datum of one sequence (``codes``: its flat elements) built from its transitions' ``segments``."""
    where = "trajectory_datums"
    if has_image:
        tokens = np.repeat(np.maximum(codes, 0), _image_positions(codes, images))
        ob_lengths = [int(_image_positions(segment[0], images).sum()) for segment in segments]
    else:
        tokens = codes
        ob_lengths = [segment[0].shape[0] for segment in segments]
    total = tokens.shape[0]
    if codes[-1] < 0:
        raise ValidationError(
            where,
            "trajectory",
            "a sequence ends with an image chunk (an empty action after an image observation).",
            "end every observation that precedes an empty action with text, or drop the empty transition.",
        )
    if total < 2:
        raise ValidationError(
            where,
            "trajectory",
            f"a sequence has {total} position; a datum needs at least 2 (input and target).",
            "give each episode at least one observation token before its action.",
        )
    floats = np.zeros((3, total), dtype=np.float32)  # logprobs, advantages, mask
    logprobs, advantages, mask = floats  # writable views, for filling only
    offset = 0
    for (_, action_tokens, action_logprobs, masked), ob_length in zip(segments, ob_lengths, strict=True):
        offset += ob_length
        end = offset + action_tokens.shape[0]
        if end > offset:
            logprobs[offset:end] = action_logprobs
            if not masked:
                advantages[offset:end] = advantage
                mask[offset:end] = 1.0
        offset = end
    tokens.flags.writeable = False
    floats.flags.writeable = False  # views taken from here on are read-only too (not the ones taken above)
    model_input = ModelInput(chunks=_chunks_of(codes[:-1], images)) if has_image else _trusted_token_input(tokens[:-1])
    input_spans, target_spans = _provenance(spans)
    return _trusted_datum(
        model_input,
        tokens[1:],
        logprobs_T=floats[0, 1:],
        advantages_T=floats[1, 1:],
        mask_T=floats[2, 1:],
        model_input_spans=input_spans,
        loss_fn_input_spans=target_spans,
    )


def trajectory_datums(
    trajectory: Trajectory, advantage: float, *, include_provenance: bool = True
) -> tuple[Datum, ...]:
    """The training datums of one trajectory whose action tokens get ``advantage`` (one datum per extended sequence).

    With ``include_provenance`` (the default, as in the cookbook), datums whose actions all have a ``sequence_id``
    carry provenance spans (see the module docstring); transitions without ids give datums without spans.

    Raises:
        ValidationError: ``advantage`` is not a finite number, or a sequence to emit has fewer than 2 positions
            or ends with an image (the cookbook raises in both cases too).
    """
    where = "trajectory_datums"
    if not isinstance(trajectory, Trajectory):
        require_type(trajectory, Trajectory, where, "trajectory")  # raises, naming the type
    if isinstance(advantage, np.floating | np.integer):
        advantage = float(advantage)
    if type(advantage) is not float or not math.isfinite(advantage):
        advantage = finite_float(advantage, where, "advantage")  # raises unless a finite int or float
    advantage32 = np.float32(advantage)
    images = _Images()
    datums: list[Datum] = []
    segments: list[_Segment] = []
    # The sequence so far is always (last observation's codes) + (last action): each observation either extends
    # the sequence before it (so it equals that sequence plus its new part) or starts a new one.
    last_ob = last_action = _EMPTY_CODES
    length = 0
    positions = 0  # positions of the sequence so far (an image counts its expected tokens)
    has_image = False
    # The sequence's spans while every transition that added positions had a sequence id, else None.
    spans: list[ProvenanceSpan] | None = [] if include_provenance else None
    for transition in trajectory.transitions:
        ob_codes, ob_has_image = _flat_codes(transition.observation, images)
        if length == 0:
            delta = ob_codes
        elif _extends(ob_codes, last_ob, last_action):
            delta = ob_codes[length:]
        else:  # not an extension: emit what we have and start a new sequence
            sequence = _sequence(last_ob, last_action)
            datums.append(_make_datum(sequence, segments, has_image, images, advantage32, spans))
            segments = []
            has_image = False
            positions = 0
            spans = [] if include_provenance else None
            delta = ob_codes
        has_image = has_image or ob_has_image
        actions = transition.action_tokens_T
        delta_positions = int(_image_positions(delta, images).sum()) if ob_has_image else delta.shape[0]
        spans = _add_spans(spans, transition.sequence_id, positions, delta_positions, actions.shape[0])
        segments.append((delta, actions, transition.action_logprobs_T, transition.mask_turn))
        last_ob, last_action = ob_codes, actions
        length = ob_codes.shape[0] + actions.shape[0]
        positions += delta_positions + actions.shape[0]
    if length:
        datums.append(_make_datum(_sequence(last_ob, last_action), segments, has_image, images, advantage32, spans))
    return tuple(datums)


def _add_spans(
    spans: list[ProvenanceSpan] | None, sequence_id: str, offset: int, prompt_length: int, sampled_length: int
) -> list[ProvenanceSpan] | None:
    """``spans`` with one transition's runs appended: its new observation positions are the end of its request's
    prompt (from ``offset``), its action the sampled tokens. A transition without a sequence id that adds
    positions ends provenance for the sequence (``None``); one that adds none changes nothing."""
    if spans is None:
        return None
    if not sequence_id:
        return None if prompt_length or sampled_length else spans
    if prompt_length:
        spans.append(_trusted_span(PromptSpan, sequence_id, offset, prompt_length))
    if sampled_length:
        spans.append(_trusted_span(SampledSpan, sequence_id, 0, sampled_length))
    return spans


_SPAN_FIELDS_TRUSTED = all(
    {f.name for f in attrs.fields(kind)} == {"sequence_id", "offset", "length"} for kind in (PromptSpan, SampledSpan)
)


def _trusted_span(kind: type[ProvenanceSpan], sequence_id: str, offset: int, length: int) -> ProvenanceSpan:
    """A span of values valid by construction (a non-empty id string, ints ``>= 0``), without the per-span checks
    (most of the cost of provenance otherwise); the validating constructor if the span's fields ever change."""
    if not _SPAN_FIELDS_TRUSTED:
        return kind(sequence_id=sequence_id, offset=offset, length=length)
    span = object.__new__(kind)
    object.__setattr__(span, "sequence_id", sequence_id)
    object.__setattr__(span, "offset", offset)
    object.__setattr__(span, "length", length)
    return span


def _extends(ob_codes: np.ndarray, last_ob: np.ndarray, last_action: np.ndarray) -> bool:
    """Whether ``ob_codes`` starts with ``last_ob`` followed by ``last_action`` (int64 arrays compared bytewise,
    which is exact for integers and several times faster than an element-wise comparison of short arrays)."""
    split = last_ob.shape[0]
    end = split + last_action.shape[0]
    return (
        end <= ob_codes.shape[0]
        and ob_codes[:split].tobytes() == last_ob.tobytes()
        and ob_codes[split:end].tobytes() == last_action.tobytes()
    )


def _sequence(last_ob: np.ndarray, last_action: np.ndarray) -> np.ndarray:
    """A fresh array of the sequence's codes."""
    return np.concatenate([last_ob, last_action])


def assemble_batch(
    groups: Sequence[TrajectoryGroup], advantages: AdvantageResult, *, include_provenance: bool = True
) -> RLBatch:
    """The datums of every trajectory of the kept groups, in the order of ``groups`` (with provenance spans where
    the transitions have sequence ids, unless ``include_provenance`` is false: see :func:`trajectory_datums`).

    Groups and trajectories are matched to their advantages by id (``group_id``, trajectory id), never by
    position; groups that ``advantages`` dropped are skipped.

    Raises:
        ValidationError: a group id is repeated, a group is neither kept nor dropped in ``advantages`` (they were
            computed for another batch), a kept group is missing from ``groups``, or a kept group's trajectory
            ids differ from those its advantages name.
    """
    where = "assemble_batch"
    require_type(advantages, AdvantageResult, where, "advantages")
    kept = advantages.by_group()
    dropped = set(advantages.dropped_group_ids)
    seen: set[str] = set()
    datums: list[Datum] = []
    trajectory_ids: list[str] = []
    group_ids: list[str] = []
    for index, group in unique_groups(groups, where, seen):
        group_id = group.group_id
        group_advantages = kept.get(group_id)
        if group_advantages is None:
            if group_id in dropped:
                continue
            raise ValidationError(
                where,
                f"groups[{index}].group_id",
                f"{group_id!r} is neither kept nor dropped by the advantages.",
                "compute the advantages from the same groups you assemble.",
            )
        by_id = group_advantages.by_trajectory()
        ids = group.trajectory_ids
        if set(ids) != set(by_id) or len(ids) != len(by_id):
            raise ValidationError(
                where,
                f"groups[{index}].trajectories",
                f"group {group_id!r} has trajectories {sorted(ids)} but its advantages name {sorted(by_id)}.",
                "compute the advantages from the same groups you assemble.",
            )
        for trajectory_id, trajectory in zip(ids, group.trajectories, strict=True):
            new = trajectory_datums(trajectory, by_id[trajectory_id], include_provenance=include_provenance)
            datums.extend(new)
            trajectory_ids.extend([trajectory_id] * len(new))
            group_ids.extend([group_id] * len(new))
    missing = [group_id for group_id in kept if group_id not in seen]
    if missing:
        raise ValidationError(
            where, "groups", f"lacks the kept groups {missing}.", "pass every group the advantages were computed from."
        )
    return RLBatch(datums=tuple(datums), trajectory_ids_D=tuple(trajectory_ids), group_ids_D=tuple(group_ids))
