"""Evaluation rows (decoded JSON objects) -> :class:`~tinkerflow.evals.records.EvalExample`. Pure.

A row is one JSON object (a JSONL line)::

    {"id": "q17",                                   # optional; default: the row's position
     "messages": [...] | "prompt": "text",          # the chat format of tinkerflow.chat_format, or one user turn
     "reference": "text" | {...},                   # optional; a JSON value is written back as compact JSON
     "choices": ["...", ...], "answer": 2 | "...",  # multiple choice: the right choice by index or by text
     "metadata": {"k": "v"}}

Any other key is an error naming it and the closest known key (``refrence`` -> ``reference``).

Without ``reference`` a row whose last message is the assistant's takes that message's text as the reference and
the messages before it as the prompt (for ``nll`` the whole conversation is kept: it is what is scored). Errors
are :class:`~tinkerflow.chat_format.ChatFormatError` naming the row (``evals.jsonl:7``) and the field.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Final

from tinkerflow.chat import Conversation, Message
from tinkerflow.chat_format import ChatFormatError, conversation_from_json
from tinkerflow.evals.records import EvalExample
from tinkerflow.evals.spec import EvalSpec

__all__ = ["examples_from_conversations", "examples_from_rows"]


#: The keys an evaluation row may hold.
ROW_KEYS: Final = frozenset({"id", "messages", "tools", "prompt", "reference", "choices", "answer", "metadata"})


def _fail(where: str, field: str, problem: str, fix: str = "") -> ChatFormatError:
    return ChatFormatError(where, field, problem, fix)


def _reference(row: Mapping[str, object], where: str) -> str | None:
    if "reference" not in row:
        return None
    value = row["reference"]
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError) as error:
        raise _fail(where, "reference", f"cannot be written as JSON: {error}.") from error


def _choices(row: Mapping[str, object], where: str) -> tuple[tuple[str, ...], int | None]:
    if "choices" not in row:
        if "answer" in row:
            raise _fail(where, "answer", "is given without choices.", "add choices, or use reference.")
        return (), None
    choices = row["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise _fail(where, "choices", "must be a list of at least two non-empty strings.")
    answer = row.get("answer")
    if isinstance(answer, str) and answer in choices:
        return tuple(choices), choices.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return tuple(choices), answer
    raise _fail(where, "answer", f"{answer!r} is neither a choice nor an index into {len(choices)} choices.")


def _messages(row: Mapping[str, object], where: str) -> tuple[Message, ...]:
    if "messages" in row:
        return conversation_from_json(row, where).messages
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt:
        return (Message(role="user", content=prompt),)
    raise _fail(where, "messages", "the row has neither messages nor a prompt.", 'add "messages" or "prompt".')


def _example(row: object, where: str, index: int, spec: EvalSpec) -> EvalExample:
    if not isinstance(row, dict):
        raise _fail(where, "row", f"must be a JSON object, got {type(row).__name__}.")
    for key in row:
        if key not in ROW_KEYS:
            close = difflib.get_close_matches(str(key), sorted(ROW_KEYS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _fail(
                where, str(key), "is not a key of an evaluation row.", f"{hint}known: {', '.join(sorted(ROW_KEYS))}."
            )
    messages = _messages(row, where)
    reference = _reference(row, where)
    choices, answer = _choices(row, where)
    ends_with_answer = messages[-1].role == "assistant"
    if spec.kind == "nll":
        if not ends_with_answer:
            raise _fail(where, "messages", "must end with the assistant message that nll scores.")
    elif ends_with_answer:
        if reference is None:
            reference = messages[-1].text()
        messages = messages[:-1]
        if not messages:
            raise _fail(where, "messages", "holds only the answer; the prompt is missing.")
    if spec.kind == "multiple_choice" and not choices:
        raise _fail(where, "choices", "are required by kind 'multiple_choice'.")
    if spec.kind in ("exact_match", "json_match", "boxed_math", "judge") and not reference:
        raise _fail(where, "reference", f"is required by kind {spec.kind!r}.", "add a reference answer.")
    raw_id = row.get("id", str(index))
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _fail(where, "metadata", "must be an object of strings.")
    return EvalExample(
        id=str(raw_id),
        messages=messages,
        reference=reference or "",
        choices=choices,
        answer=answer,
        metadata={str(key): str(value) for key, value in metadata.items()},
    )


def examples_from_rows(rows: Sequence[tuple[str, object]], spec: EvalSpec) -> tuple[EvalExample, ...]:
    """The examples of ``(where, row)`` pairs for ``spec`` (its ``limit`` applied), checked for duplicate ids."""
    chosen = rows if spec.limit is None else rows[: spec.limit]
    examples = tuple(_example(row, where, index, spec) for index, (where, row) in enumerate(chosen))
    seen: dict[str, str] = {}
    for (where, _), example in zip(chosen, examples, strict=True):
        if example.id in seen:
            raise _fail(where, "id", f"{example.id!r} was already used at {seen[example.id]}.", "make ids unique.")
        seen[example.id] = where
    return examples


def examples_from_conversations(conversations: Sequence[Conversation], spec: EvalSpec) -> tuple[EvalExample, ...]:
    """The examples of held-out conversations (each ending with the assistant's answer) for ``spec``."""
    examples: list[EvalExample] = []
    for index, conversation in enumerate(conversations):
        messages = conversation.messages
        if not messages or messages[-1].role != "assistant":
            raise _fail(f"held-out[{index}]", "messages", "does not end with an assistant message.")
        if spec.kind == "nll":
            examples.append(EvalExample(id=str(index), messages=messages))
        else:
            examples.append(EvalExample(id=str(index), messages=messages[:-1], reference=messages[-1].text()))
    return tuple(examples if spec.limit is None else examples[: spec.limit])
