"""Parsing DeepSeek V4.1 responses (private to :mod:`tinkerflow.render.deepseek_v4_1`): reasoning blocks and the
DSML tool-call block, as tinker-cookbook 0.6.1 parses them, but on tokens.

Only real control tokens (``<think>``, ``</think>``, ``｜DSML｜``) have meaning: the response is decoded with each
of them replaced by a character that occurs nowhere in the decoded text, the cookbook's patterns run over that
text with those characters for the control tokens, and what is kept is spelled back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Final

from tinkerflow.chat import ContentPart, Message, TextPart, ThinkingPart, ToolCall, UnparsedToolCall
from tinkerflow.errors import ValidationError
from tinkerflow.render._parsing import UNTERMINATED_TOOL_BLOCK, assistant_message
from tinkerflow.render._segments import segments

__all__ = ["parse_v4_1_body"]

_SPELLINGS: Final = ("<think>", "</think>", "｜DSML｜")
_FIRST_SENTINEL: Final = 0xF0000  # supplementary private use area A


def _sentinels(texts: list[str]) -> tuple[str, str, str]:
    """Three characters that occur in none of ``texts``."""
    used = set("".join(texts))
    chosen: list[str] = []
    code = _FIRST_SENTINEL
    while len(chosen) < 3:
        if chr(code) not in used:
            chosen.append(chr(code))
        code += 1
    return chosen[0], chosen[1], chosen[2]


class _Coded:
    """The decoded response with the three control tokens as sentinel characters."""

    def __init__(self, tokens: list[int], decode: Callable[[list[int]], str], controls: tuple[int, int, int]) -> None:
        items = segments(tokens, controls, decode)
        texts = [item for item in items if isinstance(item, str)]
        self.think, self.end_think, self.dsml = _sentinels(texts)
        by_id = dict(zip(controls, (self.think, self.end_think, self.dsml), strict=True))
        self.text = "".join(item if isinstance(item, str) else by_id[item] for item in items)
        self._back = str.maketrans(dict(zip((self.think, self.end_think, self.dsml), _SPELLINGS, strict=True)))
        d = re.escape(self.dsml)
        self.calls_open = f"<{self.dsml} calls>"
        self.calls_close = f"</{self.dsml} calls>"
        self.block = re.compile(rf"(?:\n\n)?<{d} calls>.*?</{d} calls>", re.DOTALL)
        self.invoke = re.compile(rf'<{d} invoke name="(.*?)">\n(.*?)</{d} invoke>', re.DOTALL)
        self.param = re.compile(rf'<{d} parameter name="(.*?)" string="(true|false)">(.*?)</{d} parameter>', re.DOTALL)

    def spell(self, text: str) -> str:
        return text.translate(self._back)


def _tool_calls(coded: _Coded, block: str) -> tuple[list[ToolCall], list[UnparsedToolCall]]:
    body = block.removeprefix("\n\n").removeprefix(coded.calls_open).removesuffix(coded.calls_close)
    invokes = list(coded.invoke.finditer(body))
    if not invokes or coded.invoke.sub("", body).strip():
        return [], [UnparsedToolCall(raw_text=coded.spell(block), error="Invalid DSML: malformed invoke")]
    calls: list[ToolCall] = []
    unparsed: list[UnparsedToolCall] = []
    for invoke in invokes:
        name, params = coded.spell(invoke.group(1)), invoke.group(2)
        arguments: dict[str, object] = {}
        try:
            if not name.strip():
                raise ValueError("empty function name")
            if coded.param.sub("", params).strip():
                raise ValueError("text outside parameters")
            for param in coded.param.finditer(params):
                key, is_string, value = coded.spell(param.group(1)), param.group(2), coded.spell(param.group(3))
                if not key.strip():
                    raise ValueError("empty parameter name")
                if key in arguments:
                    raise ValueError(f"duplicate parameter {key!r}")
                arguments[key] = value if is_string == "true" else json.loads(value)
            calls.append(ToolCall(name=name, arguments=json.dumps(arguments)))
        except (ValueError, ValidationError) as error:
            problem = error.problem if isinstance(error, ValidationError) else str(error)
            unparsed.append(UnparsedToolCall(raw_text=coded.spell(invoke.group(0)), error=f"Invalid DSML: {problem}"))
    return calls, unparsed


def _parts(coded: _Coded, content: str) -> list[ContentPart]:
    """Reasoning blocks (``<think>...</think>``, empty ones dropped) and the text around them."""
    if coded.think not in content:
        return [TextPart(coded.spell(content))]
    parts: list[ContentPart] = []
    pattern = re.compile(rf"{re.escape(coded.think)}(.*?){re.escape(coded.end_think)}", re.DOTALL)
    position = 0
    for match in pattern.finditer(content):
        if match.start() > position:
            parts.append(TextPart(coded.spell(content[position : match.start()])))
        if match.group(1):
            parts.append(ThinkingPart(coded.spell(match.group(1))))
        position = match.end()
    if position < len(content):
        parts.append(TextPart(coded.spell(content[position:])))
    return parts


def parse_v4_1_body(
    tokens: list[int], decode: Callable[[list[int]], str], think: int, end_think: int, dsml: int
) -> Message:
    """The assistant message of a response body (the tokens before ``<｜end▁of▁sentence｜>``)."""
    coded = _Coded(tokens, decode, (think, end_think, dsml))
    content = coded.text
    calls: list[ToolCall] = []
    unparsed: list[UnparsedToolCall] = []
    block = coded.block.search(content)
    if block is not None:
        calls, unparsed = _tool_calls(coded, block.group(0))
        after = content[block.end() :]
        if after.strip():
            unparsed.append(
                UnparsedToolCall(raw_text=coded.spell(after), error="Invalid DSML: output after calls block")
            )
        content = content[: block.start()]
    opens = content.count(coded.calls_open)
    if opens and opens > content.count(coded.calls_close):
        unparsed.append(
            UnparsedToolCall(
                raw_text=coded.spell(content[content.rfind(coded.calls_open) :]),
                error=f"{UNTERMINATED_TOOL_BLOCK}: '<｜DSML｜ calls>' opened without a matching '</｜DSML｜ calls>'",
            )
        )
    elif coded.dsml in content:
        unparsed.append(
            UnparsedToolCall(raw_text=coded.spell(content), error="Invalid DSML: marker outside a calls block")
        )
    return assistant_message(_parts(coded, content), calls, unparsed)
