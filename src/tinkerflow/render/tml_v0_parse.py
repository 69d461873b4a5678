"""Parsing a sampled TML v0 response as tinker-cookbook 0.6.1's ``tml_v0`` does (tml-renderers 0.2.1's parser,
then the cookbook's conversion to a message); the rules below were measured against it:

* a message is ``<|message_X|>[name]<|content_Y|>body<|end_message|>``; everything up to ``<|end_message|>`` is
  body text, control tokens included. Between messages, ordinary text, ``<|end_message|>``, ``<|endoftext|>``
  and other control tokens are skipped, a content token opens a message of the previous author, and
  ``<|content_model_end_sampling|>`` (the stop token) ends the sample but parsing goes on after it;
* a message cut off in its body is dropped; one cut off in its header is malformed unless another control token
  came after the header token (then it is dropped);
* malformed (the decoded response, ``MALFORMED``): a header inside a header, the stop token before any message, a
  content kind without a message form (text tool calls, XML, images, audio), a tool call whose JSON is not
  ``{"name": str, "args": object}`` or whose header names another tool; also a response without any message;
* otherwise consecutive messages of one author (each tool message alone) form a turn and the last turn is the
  parsed message: thinking and text parts (tool errors as text) in order, a single text part as a string, tool
  calls with ids ``functions.{name}:{n}``; ``STOP_SEQUENCE`` when the stop token was seen, else ``MALFORMED``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tinkerflow.chat import ContentPart, Message, TextPart, ThinkingPart, ToolCall
from tinkerflow.errors import ValidationError
from tinkerflow.render.records import ParsedResponse, Termination
from tinkerflow.tokenizers import Tokenizer

__all__ = ["parse_tml_v0"]

_AUTHORS = {
    "<|message_model|>": "assistant",
    "<|message_user|>": "user",
    "<|message_system|>": "system",
    "<|message_tool|>": "tool",
}
_CONTENT = (
    "<|content_text|>",
    "<|content_thinking|>",
    "<|content_invoke_tool_json|>",
    "<|content_tool_error|>",
    "<|content_invoke_tool_text|>",
    "<|content_xml|>",
    "<|content_image|>",
    "<|content_audio_input|>",
)
_KEPT = frozenset(_CONTENT[:4])  # the other kinds have no message form: the response is malformed


class _MalformedError(Exception):
    pass


def _messages(
    tokenizer: Tokenizer, ids: Mapping[str, int], tokens: list[int]
) -> tuple[list[tuple[str, str, str, str]], bool]:
    """``[(role, header name, content kind, body)]`` of the complete messages, and whether the stop token was
    seen between messages."""
    authors = {ids[spelling]: role for spelling, role in _AUTHORS.items()}
    kinds = {ids[spelling]: spelling for spelling in _CONTENT if spelling in ids}
    end, stop = ids["<|end_message|>"], ids["<|content_model_end_sampling|>"]
    specials = set(ids.values())
    result: list[tuple[str, str, str, str]] = []
    saw_stop = False
    state, role, kind = "out", "assistant", ""
    name: list[int] = []
    interrupted = False
    body: list[int] = []
    for token in tokens:
        if state == "body":
            if token == end:
                result.append((role, tokenizer.decode(name), kind, tokenizer.decode(body)))
                state = "out"
            else:
                body.append(token)
        elif state == "header":
            if token in authors:
                raise _MalformedError
            if token in kinds:
                state, kind, body = "body", kinds[token], []
            elif token in specials:
                interrupted = True
            else:
                name.append(token)
        elif token in authors:
            state, role, name, interrupted = "header", authors[token], [], False
        elif token in kinds:
            state, kind, name, body = "body", kinds[token], [], []
        elif token == stop:
            if not result:
                raise _MalformedError
            saw_stop = True
    if state == "header" and not interrupted:
        raise _MalformedError  # cut in a header (a body cut off, or a header followed by a control token: dropped)
    return result, saw_stop


def _call(name: str, body: str, number: int) -> ToolCall:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise _MalformedError from error
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not isinstance(value.get("args"), dict):
        raise _MalformedError
    if name and name != value["name"]:
        raise _MalformedError
    try:
        return ToolCall(
            name=value["name"], arguments=json.dumps(value["args"]), id=f"functions.{value['name']}:{number}"
        )
    except ValidationError as error:
        raise _MalformedError from error


def parse_tml_v0(tokenizer: Tokenizer, ids: Mapping[str, int], tokens: list[int]) -> ParsedResponse:
    """Sampled tokens into a message and its termination (see the module docstring)."""
    raw = ParsedResponse(Message(role="assistant", content=tokenizer.decode(tokens)), Termination.MALFORMED)
    try:
        messages, saw_stop = _messages(tokenizer, ids, tokens)
        converted: list[tuple[str, ContentPart | ToolCall]] = []
        for number, (role, name, kind, body) in enumerate(messages):
            if kind not in _KEPT:
                raise _MalformedError
            if kind == "<|content_invoke_tool_json|>":
                converted.append((role, _call(name, body, number)))
            else:
                converted.append((role, ThinkingPart(body) if kind == "<|content_thinking|>" else TextPart(body)))
    except _MalformedError:
        return raw
    turn: list[ContentPart | ToolCall] = []
    for index, (role, item) in enumerate(converted):
        if index and (converted[index - 1][0] != role or role == "tool"):
            turn = []
        turn.append(item)
    parts = [item for item in turn if not isinstance(item, ToolCall)]
    calls = [item for item in turn if isinstance(item, ToolCall)]
    if not turn:
        return raw
    role = converted[-1][0]
    first = parts[0] if len(parts) == 1 else None
    content: str | tuple[ContentPart, ...] = (
        first.text if isinstance(first, TextPart) else (tuple(parts) if parts else "")
    )
    termination = Termination.STOP_SEQUENCE if saw_stop else Termination.MALFORMED
    if role != "assistant":
        # the cookbook returns the last turn whoever wrote it; tinkerflow keeps the role only for text
        return ParsedResponse(Message(role="assistant", content=content), termination)
    return ParsedResponse(Message(role="assistant", content=content, tool_calls=tuple(calls)), termination)
