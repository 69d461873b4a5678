"""Adapters between tinkerflow and tml-renderers 0.2.1 (test-only)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tinkerflow.chat import Conversation, Message, TextPart, ThinkingPart
from tinkerflow.tokenizers import TokenizerError


class TmlTokenizer:
    """tinkerflow's Tokenizer protocol over a tml-renderers tokenizer (its ordinary encoding and its specials)."""

    def __init__(self, tml: Any, name: str, extra: Mapping[str, str] | None = None) -> None:
        self._tml = tml
        self._name = name
        names = [f"<｜{n.replace('_', '▁')}｜>" for n in tml.special_tokens()] + list(extra or {})
        self._added: dict[str, int] = {}
        for text in names:
            try:
                self._added[text] = int(tml.encode_special(text))
            except Exception:
                continue

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return 0

    @property
    def bos_token_id(self) -> int | None:
        return self._added.get(self._tml.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._added.get(self._tml.eos_token)

    @property
    def added_tokens(self) -> Mapping[str, int]:
        return dict(self._added)

    def encode(self, text: str) -> list[int]:
        return list(self._tml.encode_ordinary(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        return str(self._tml.decode([int(t) for t in tokens]))

    def token_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        try:
            return int(self._tml.encode_special(token))
        except Exception as error:
            raise TokenizerError("TmlTokenizer", "token", f"{token!r} is unknown.", "") from error


def to_openai(conversation: Conversation) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    if conversation.tools:
        specs = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters_dict()},
            }
            for t in conversation.tools
        ]
        result.append({"role": "tool_declare", "content": json.dumps(specs)})
    for message in conversation.messages:
        result.append(_message(message))
    return result


def _message(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, str) or not message.content:
        entry["content"] = message.content or ""
    else:
        parts = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, ThinkingPart):
                parts.append({"type": "thinking", "thinking": part.thinking})
        entry["content"] = parts
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        entry["name"] = message.name
    return entry


def sft(renderer: Any, conversation: Conversation) -> list[tuple[list[int], list[float]]]:
    from tml_renderers import chat

    examples = renderer.render_for_sft(chat.OpenAIMessage.from_oss_messages(to_openai(conversation)))
    return [
        (
            [t for span in e.input_token_spans for t in span.span.tokens],
            [float(w) for w in e.per_token_loss_weight_unshifted],
        )
        for e in examples
    ]


def completion(renderer: Any, conversation: Conversation) -> list[int]:
    from tml_renderers import chat

    spans, _ = renderer.render_for_completion(chat.OpenAIMessage.from_oss_messages(to_openai(conversation)))
    return [t for span in spans for t in span.span.tokens]
