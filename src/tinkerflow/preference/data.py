"""Preference data: rows of the common chosen/rejected layouts -> :class:`LabeledComparison`.

Layouts (one JSON object per row, holding only its layout's keys: an unknown key is an error naming it and the
closest known key; a key holding ``null`` counts as absent. Rows of a Hugging Face dataset are read with only the
columns some layout knows, so a dataset's other columns, such as scores or ids, are left out):

``prompt_chosen_rejected``
    ``{"prompt": [messages] | "text", "chosen": [messages] | "text", "rejected": [messages] | "text"}``. A text
    prompt is one user message, a text completion one assistant message. ``chosen``/``rejected`` may also be the
    full conversation repeating the prompt's messages first (as in ``allenai/llama-3.1-tulu-3-8b-preference-mixture``):
    that prefix is removed. An optional ``"label"`` may only say ``"a"`` (chosen is preferred, as the keys say):
    any other label contradicts the row and is refused.
``chosen_rejected``
    ``{"chosen": [full conversation], "rejected": [full conversation]}``: the prompt is the longest common prefix
    of the two message lists, the rest of each is its completion (``"label"`` as above).
``ab_label``
    ``{"prompt": ..., "completion_a": ..., "completion_b": ..., "label": "a" | "b" | "tie"}`` (text or messages, as
    above). This is what :func:`labeled_comparison_to_json` writes.
``cookbook``
    ``{"comparison": {"prompt_conversation": [...], "completion_A": [...], "completion_B": [...]}, "label": "A" |
    "B" | "Tie"}``: the JSONL that tinker-cookbook's ``ComparisonBuilderFromJsonl`` reads.

Messages use the common chat format of :mod:`tinkerflow.chat_format`; an optional top-level ``"tools"`` list is
offered to the prompt. ``chosen``/``rejected`` rows are labeled ``"a"`` (``completion_a`` is the chosen one).
Labels are read case-insensitively (``"A"``, ``"Tie"``). The two completions must differ, and neither may be empty
(no text, thinking, image or tool call in any of its messages): such a pair expresses no preference.

Every bad row raises :class:`PreferenceFormatError` (a :class:`~tinkerflow.chat_format.ChatFormatError`) naming
the row's source (``prefs.jsonl:17``, ``dataset[17]``) and the field (``chosen[1].role``), as the supervised data
does. Everything here is pure (:func:`labeled_comparison_from_json` is a pipeline stage as it is); reading a file or
a Hugging Face dataset is the shell's (:func:`tinkerflow.shell.io.data.load_preference_jsonl`,
:func:`~tinkerflow.shell.io.data.load_preference_hf`, and the loops' one data-source loader).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias, cast

from tinkerflow._validate import closest
from tinkerflow.chat import Conversation, Message, Role
from tinkerflow.chat_format import (
    ChatFormatError,
    check_keys,
    conversation_from_json,
    conversation_to_json,
    decode_json_line,
)
from tinkerflow.config import BadRowPolicy
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.preference.records import COMPLETION_ROLES, Comparison, Label, LabeledComparison, no_preference

__all__ = [
    "LAYOUT_KEYS",
    "PREFERENCE_KEYS",
    "PREFERENCE_LAYOUTS",
    "PreferenceFormatError",
    "PreferenceLayout",
    "detect_layout",
    "labeled_comparison_from_json",
    "labeled_comparison_to_json",
    "parse_preference_line",
    "preference_row_from_hf",
    "preference_rows_from_hf",
]

PreferenceLayout: TypeAlias = Literal["prompt_chosen_rejected", "chosen_rejected", "ab_label", "cookbook"]
PREFERENCE_LAYOUTS: Final[tuple[PreferenceLayout, ...]] = (
    "prompt_chosen_rejected",
    "chosen_rejected",
    "ab_label",
    "cookbook",
)


#: The keys a row of each layout may hold.
LAYOUT_KEYS: Final[dict[PreferenceLayout, frozenset[str]]] = {
    "prompt_chosen_rejected": frozenset({"prompt", "chosen", "rejected", "label", "tools"}),
    "chosen_rejected": frozenset({"chosen", "rejected", "label", "tools"}),
    "ab_label": frozenset({"prompt", "completion_a", "completion_b", "label", "tools"}),
    "cookbook": frozenset({"comparison", "label", "tools"}),
}
#: The keys of a cookbook row's ``comparison`` object.
_COOKBOOK_KEYS: Final = frozenset({"prompt_conversation", "completion_A", "completion_B"})
#: Every key some layout knows: the columns a Hugging Face dataset's rows are read with.
PREFERENCE_KEYS: Final[frozenset[str]] = frozenset(key for keys in LAYOUT_KEYS.values() for key in keys)


class PreferenceFormatError(ChatFormatError):
    """A preference row that does not describe a valid labeled comparison. ``where`` is the row's source."""


def _fail(where: str, field: str, problem: str, fix: str = "") -> PreferenceFormatError:
    return PreferenceFormatError(where, field, problem, fix)


def _present(row: Mapping[str, object], key: str) -> bool:
    return row.get(key) is not None


def detect_layout(row: Mapping[str, object]) -> PreferenceLayout | None:
    """The layout a row is written in, judged by its keys (``None`` when none fits). Keys holding ``null`` count as
    absent (a Hugging Face dataset fills missing columns with ``None``)."""
    if _present(row, "comparison"):
        return "cookbook"
    if _present(row, "completion_a") or _present(row, "completion_b"):
        return "ab_label"
    if _present(row, "chosen") or _present(row, "rejected"):
        return "prompt_chosen_rejected" if _present(row, "prompt") else "chosen_rejected"
    return None


def _required(row: Mapping[str, object], key: str, where: str, prefix: str = "") -> object:
    value = row.get(key)
    if value is None:
        raise _fail(where, f"{prefix}{key}", "is missing.", f"give the row a {key!r} value.")
    return value


def _rename(field: str, prefix: str, name: str) -> str:
    """``messages[2].role`` -> ``chosen[2].role`` (a chat-format field renamed to the row's key)."""
    return name + field[len(prefix) :] if field.startswith(prefix) else field


def _conversation(value: object, where: str, field: str, *, text_role: Role, tools: object = None) -> Conversation:
    """The messages of a row value (a text is one ``text_role`` message), with ``tools`` as its tool specs."""
    if isinstance(value, str):
        raw: list[object] = [{"role": text_role, "content": value}]
    elif isinstance(value, list):
        raw = cast("list[object]", value)
        if not raw:
            raise _fail(where, field, "is empty.", "give at least one message (or a text).")
    else:
        raise _fail(
            where,
            field,
            f"must be a text or a list of messages, got {type(value).__name__}.",
            'write messages as [{"role": ..., "content": ...}, ...].',
        )
    row: dict[str, object] = {"messages": raw}
    if tools is not None:
        row["tools"] = tools
    try:
        return conversation_from_json(row, where)
    except ChatFormatError as error:
        raise _fail(where, _rename(error.field, "messages", field), error.problem, error.fix) from error


def _completion(value: object, where: str, field: str, prompt: Conversation) -> tuple[tuple[Message, ...], int]:
    """A completion and the index of its first message in the row's list: non-zero when the list is the full
    conversation, repeating the prompt's messages first (recognised only for prompts with a user, system or
    developer message, which no completion can hold)."""
    messages = _conversation(value, where, field, text_role="assistant").messages
    size = len(prompt.messages)
    if (
        isinstance(value, list)
        and len(messages) > size
        and messages[:size] == prompt.messages
        and any(message.role not in COMPLETION_ROLES for message in prompt.messages)
    ):
        return messages[size:], size
    if messages[0].role not in COMPLETION_ROLES:
        raise _fail(
            where,
            f"{field}[0].role",
            f"starts with a {messages[0].role!r} message but does not begin with the row's prompt.",
            "give only the completion (assistant messages), or the full conversation starting with exactly the "
            "prompt's messages.",
        )
    return messages, 0


_COMPLETION_FIELD = re.compile(r"^(completion_[ab])(?:\[(\d+)\])?(.*)$", re.DOTALL)


def _comparison(
    where: str,
    prompt: Conversation,
    a: tuple[tuple[Message, ...], int],
    b: tuple[tuple[Message, ...], int],
    names: tuple[str, str],
) -> Comparison:
    """Build the record; its validation errors are renamed to the row's keys and message positions."""
    try:
        comparison = Comparison(prompt=prompt, completion_a=a[0], completion_b=b[0])
    except ValidationError as error:
        field = error.field
        match = _COMPLETION_FIELD.match(field)
        if match:
            which = 0 if match.group(1) == "completion_a" else 1
            name, offset = names[which], (a, b)[which][1]
            index = "" if match.group(2) is None else f"[{int(match.group(2)) + offset}]"
            field = f"{name}{index}{match.group(3)}"
        raise _fail(where, field, error.problem, error.fix) from error
    return _checked_pair(where, comparison, names)


def _label(value: object, where: str, field: str) -> Label:
    text = value.lower() if isinstance(value, str) else None
    if text not in ("a", "b", "tie"):
        raise _fail(where, field, f"must be 'a', 'b' or 'tie', got {value!r:.40}.", "label the preferred completion.")
    return cast("Label", text)


def _chosen_label(row: Mapping[str, object], where: str) -> Label:
    """The label of a chosen/rejected row: ``"a"`` (chosen is preferred); a ``"label"`` saying otherwise is refused."""
    value = row.get("label")
    if value is None:
        return "a"
    label = _label(value, where, "label")
    if label != "a":
        raise _fail(
            where,
            "label",
            f"is {label!r}, but a chosen/rejected row already says its chosen completion is preferred.",
            "drop the label (or swap chosen and rejected); for a tie or a 'b' preference write the row as "
            "prompt/completion_a/completion_b/label.",
        )
    return label


def _checked_pair(where: str, comparison: Comparison, names: tuple[str, str]) -> Comparison:
    """``comparison`` after checking it expresses a preference (:func:`~tinkerflow.preference.records.no_preference`:
    neither completion empty, the two not identical); errors name the side by the row's key."""
    problem = no_preference(comparison)
    if problem is not None:
        field, text, fix = problem
        side = names[0] if field == "completion_a" else names[1]
        raise _fail(where, side, text.replace("the other completion", names[0]), fix)
    return comparison


def _from_prompt_chosen_rejected(row: Mapping[str, object], where: str) -> LabeledComparison:
    prompt = _conversation(_required(row, "prompt", where), where, "prompt", text_role="user", tools=row.get("tools"))
    chosen = _completion(_required(row, "chosen", where), where, "chosen", prompt)
    rejected = _completion(_required(row, "rejected", where), where, "rejected", prompt)
    label = _chosen_label(row, where)
    return LabeledComparison(
        comparison=_comparison(where, prompt, chosen, rejected, ("chosen", "rejected")), label=label
    )


def _from_chosen_rejected(row: Mapping[str, object], where: str) -> LabeledComparison:
    chosen_raw = _required(row, "chosen", where)
    rejected_raw = _required(row, "rejected", where)
    label = _chosen_label(row, where)
    for key, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if not isinstance(value, list):
            raise _fail(
                where,
                key,
                f"must be a full conversation (a list of messages) when the row has no 'prompt', got "
                f"{type(value).__name__}.",
                "add a 'prompt', or give both sides as message lists sharing the prompt's messages.",
            )
    chosen_conversation = _conversation(chosen_raw, where, "chosen", text_role="assistant", tools=row.get("tools"))
    chosen = chosen_conversation.messages
    rejected = _conversation(rejected_raw, where, "rejected", text_role="assistant").messages
    shared = 0
    for left, right in zip(chosen, rejected, strict=False):
        if left != right:
            break
        shared += 1
    if shared == 0:
        raise _fail(
            where,
            "rejected[0]",
            "differs from chosen[0]: the two conversations share no prompt.",
            "both sides must start with the same prompt messages; or give the prompt in a 'prompt' key.",
        )
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(messages):
            raise _fail(
                where,
                key,
                f"has nothing after the {shared} messages both sides share: it has no completion.",
                "each side must add at least one assistant message after the shared prompt.",
            )
    prompt = Conversation(messages=chosen[:shared], tools=chosen_conversation.tools)
    comparison = _comparison(
        where, prompt, (chosen[shared:], shared), (rejected[shared:], shared), ("chosen", "rejected")
    )
    return LabeledComparison(comparison=comparison, label=label)


def _from_ab_label(row: Mapping[str, object], where: str) -> LabeledComparison:
    prompt = _conversation(_required(row, "prompt", where), where, "prompt", text_role="user", tools=row.get("tools"))
    a = _completion(_required(row, "completion_a", where), where, "completion_a", prompt)
    b = _completion(_required(row, "completion_b", where), where, "completion_b", prompt)
    label = _label(_required(row, "label", where), where, "label")
    return LabeledComparison(comparison=_comparison(where, prompt, a, b, ("completion_a", "completion_b")), label=label)


def _from_cookbook(row: Mapping[str, object], where: str) -> LabeledComparison:
    body = row.get("comparison")
    if not isinstance(body, Mapping):
        raise _fail(where, "comparison", f"must be an object, got {type(body).__name__}.")
    inner = cast("Mapping[str, object]", body)
    check_keys(inner, _COOKBOOK_KEYS, where, "comparison", "a cookbook comparison", PreferenceFormatError)
    prefix = "comparison."
    prompt = _conversation(
        _required(inner, "prompt_conversation", where, prefix),
        where,
        f"{prefix}prompt_conversation",
        text_role="user",
        tools=row.get("tools"),
    )
    a = _completion(_required(inner, "completion_A", where, prefix), where, f"{prefix}completion_A", prompt)
    b = _completion(_required(inner, "completion_B", where, prefix), where, f"{prefix}completion_B", prompt)
    label = _label(_required(row, "label", where), where, "label")
    names = (f"{prefix}completion_A", f"{prefix}completion_B")
    return LabeledComparison(comparison=_comparison(where, prompt, a, b, names), label=label)


_PARSERS: Final = {
    "prompt_chosen_rejected": _from_prompt_chosen_rejected,
    "chosen_rejected": _from_chosen_rejected,
    "ab_label": _from_ab_label,
    "cookbook": _from_cookbook,
}


def labeled_comparison_from_json(
    row: object, where: str = "row", *, layout: PreferenceLayout | None = None
) -> LabeledComparison:
    """A :class:`LabeledComparison` from a parsed JSON row in one of the layouts of the module docstring.

    ``layout`` forces a layout (default: :func:`detect_layout`). ``where`` names the row's source for errors,
    e.g. ``"prefs.jsonl:17"``.

    Raises:
        PreferenceFormatError: the row fits no layout, misses a key, holds a key its layout does not know (named with
            the closest known key), a label that contradicts its keys, an empty completion, two identical completions,
            or an invalid value (the error names the field, e.g. ``chosen[1].role``).
    """
    if not isinstance(row, Mapping):
        raise _fail(where, "row", f"must be a JSON object, got {type(row).__name__}.")
    mapping = cast("Mapping[str, object]", row)
    chosen = detect_layout(mapping) if layout is None else layout
    if chosen is None:
        keys = ", ".join(sorted(str(key) for key in mapping)) or "none"
        typos = [
            f"{key!r} -> {close[0]!r}"
            for key in map(str, mapping)
            if key not in PREFERENCE_KEYS and (close := closest(key, PREFERENCE_KEYS))
        ]
        hint = f"did you mean {', '.join(typos)}? " if typos else ""
        raise _fail(
            where,
            "row",
            f"fits no preference layout (keys: {keys}).",
            f"{hint}use prompt/chosen/rejected, chosen/rejected (full conversations), "
            "prompt/completion_a/completion_b/label or the cookbook's comparison/label.",
        )
    parser = _PARSERS.get(chosen)
    if parser is None:
        raise ConfigError(
            "labeled_comparison_from_json", "layout", f"unknown layout {chosen!r}.", f"use one of {PREFERENCE_LAYOUTS}."
        )
    check_keys(mapping, LAYOUT_KEYS[chosen], where, "", f"a {chosen} row", PreferenceFormatError)
    return parser(mapping, where)


def parse_preference_line(
    line: bytes | str, where: str, *, layout: PreferenceLayout | None = None
) -> LabeledComparison:
    """One JSONL line (bytes or text) -> :class:`LabeledComparison`; invalid UTF-8 or JSON is a
    :class:`PreferenceFormatError` too."""
    return labeled_comparison_from_json(decode_json_line(line, where, PreferenceFormatError), where, layout=layout)


def _check_policy(policy: object, where: str) -> None:
    if policy not in ("raise", "skip"):
        raise ConfigError(where, "policy", f"must be 'raise' or 'skip', got {policy!r}.")


def preference_row_from_hf(
    row: Mapping[str, object], where: str, *, layout: PreferenceLayout | None = None
) -> LabeledComparison:
    """:func:`labeled_comparison_from_json` of a Hugging Face dataset's row, read with only the columns some layout
    knows (:data:`PREFERENCE_KEYS`): a dataset's other columns (scores, ids, sources) are not part of the row."""
    if not isinstance(row, Mapping):
        raise _fail(where, "row", f"must be a mapping, got {type(row).__name__}.")
    return labeled_comparison_from_json(
        {key: value for key, value in row.items() if key in PREFERENCE_KEYS}, where, layout=layout
    )


def preference_rows_from_hf(
    rows: Iterable[Mapping[str, object]],
    *,
    policy: BadRowPolicy = "raise",
    source: str = "dataset",
    layout: PreferenceLayout | None = None,
) -> tuple[list[LabeledComparison], int]:
    """Labeled comparisons from dict rows (a Hugging Face ``datasets.Dataset`` iterates as such;
    :func:`preference_row_from_hf` reads each), and the number of bad rows skipped. Errors name the row as
    ``source[index]``."""
    _check_policy(policy, "preference_rows_from_hf")
    comparisons: list[LabeledComparison] = []
    skipped = 0
    for index, row in enumerate(rows):
        try:
            comparisons.append(preference_row_from_hf(row, f"{source}[{index}]", layout=layout))
        except ChatFormatError:
            if policy == "raise":
                raise
            skipped += 1
    return comparisons, skipped


def _messages_json(messages: tuple[Message, ...]) -> list[object]:
    return cast("list[object]", conversation_to_json(Conversation(messages=messages))["messages"])


def labeled_comparison_to_json(labeled: LabeledComparison) -> dict[str, object]:
    """The ``ab_label`` row of a labeled comparison (the inverse of :func:`labeled_comparison_from_json`).

    Raises:
        TinkerflowError: a message holds unparsed tool calls (they have no place in the common chat format).
    """
    comparison = labeled.comparison
    prompt = conversation_to_json(comparison.prompt)
    row: dict[str, object] = {
        "prompt": prompt["messages"],
        "completion_a": _messages_json(comparison.completion_a),
        "completion_b": _messages_json(comparison.completion_b),
        "label": labeled.label,
    }
    if "tools" in prompt:
        row["tools"] = prompt["tools"]
    return row
