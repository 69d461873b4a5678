"""Hypothesis strategies for conformance tests: conversations a family and a reference can both write.

Every restriction below is a documented difference between the references (or a deliberate difference of
tinkerflow's) and is listed in docs/rendering.md; the strategies never filter on the references' output.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Collection

import attrs
from hypothesis import strategies as st

from tinkerflow.chat import (
    ContentPart,
    Conversation,
    ImagePart,
    Message,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
)

_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)

# Look-alikes of chat-template control text, and edge cases of whitespace and unicode.
_TRICKY = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n",
    " \n",
    "\t",
    "\r\n",
    "é",
    "e\u0301",
    "日本語",
    "🙂",
    "User:",
    "Assistant:",
    "\n\nUser:",
    "<|im_end|>",
    "<|im_start|>",
    "<|eot_id|>",
    "<|end_header_id|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<｜User｜>",
    "<｜end▁of▁sentence｜>",
    "<|start|>",
    "<|message|>",
    "<|return|>",
    "{",
    '"',
    "\\",
    "0",
    "123",
    "'s",
]


@attrs.frozen
class Profile:
    """What a (family, reference) pair can both write.

    Attributes:
        roles: non-assistant roles that may appear (besides user/assistant).
        thinking: assistant messages may carry thinking parts.
        tools: assistant tool calls, tool results and tool specs.
        parts: content may be a tuple of parts (else always a string).
        text_ok: predicate every generated text must satisfy.
        max_calls: tool calls per assistant message.
        assistant_text: assistant messages always have non-empty text (DeepSeek: the cookbook drops the end token
            of an empty assistant message).
        system_first_only: a system message only at index 0.
        tool_names: tool results carry the tool's name.
        no_thinking_mid_turn: no thinking on assistant messages after the last user message but the final one
            (the official Qwen3 template keeps it, the cookbook strips it).
        ascii_specs: tool specs are ASCII (the cookbook escapes non-ASCII in them, templates do not).
        last_assistant: conversations end with an assistant message.
        thinking_with_text: an assistant message with thinking and tool calls has text too (the cookbook writes a
            newline before the first call after a thinking block even without text; the template does not).
        single_text_roles: roles whose content is a string or one text part (the cookbook's ``ensure_text``).
        images: user messages may hold PNG images.
        specs: conversations may declare tool specs.
        assistant_thinking: every assistant message reasons (non-empty thinking, then non-empty text).
        calls_without_text: assistant messages with tool calls have no text or thinking (tml-renderers splits
            text and tool calls into separate messages).
        thinking_first: at most one thinking part, then at most one text part (tml-renderers drops later thinking
            parts and encodes each text part on its own).
        thinking_last_only: only the conversation's final message may reason (gpt-oss's template drops earlier
            reasoning, the cookbook keeps it).
        system_text: system messages are never empty (the cookbook drops the separator after an empty system
            prompt before the tools section; the template and tml-renderers keep it).
    """

    roles: tuple[str, ...] = ("system",)
    thinking: bool = False
    tools: bool = False
    parts: bool = True
    text_ok: Callable[[str], bool] = lambda text: True
    max_calls: int = 2
    assistant_text: bool = False
    system_first_only: bool = False
    tool_names: bool = True
    no_thinking_mid_turn: bool = False
    ascii_specs: bool = False
    last_assistant: bool = False
    thinking_with_text: bool = False
    single_text_roles: tuple[str, ...] = ()
    images: bool = False
    specs: bool = True
    assistant_thinking: bool = False
    calls_without_text: bool = False
    system_text: bool = False
    thinking_first: bool = False
    thinking_last_only: bool = False
    min_messages: int = 1
    max_messages: int = 7


def without_spellings(spellings: Collection[str]) -> Callable[[str], bool]:
    """A predicate: the text spells none of ``spellings`` (e.g. a tokenizer's added tokens)."""
    if not spellings:
        return lambda text: True
    pattern = re.compile("|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True)))
    return lambda text: pattern.search(text) is None


def alnum_edges(text: str) -> bool:
    """Empty, or starting and ending with a letter or digit (never merges with template text around it)."""
    return not text or (text[0].isalnum() and text[-1].isalnum())


def lstrip_stable(text: str) -> bool:
    """Does not start with whitespace (which the official templates tokenize together with the header's
    newline, while renderers encode the header apart for loss masking)."""
    return text == text.lstrip()


def strip_stable(text: str) -> bool:
    """No leading or trailing whitespace (Llama 3.1's template trims every message)."""
    return text == text.strip()


def all_of(*predicates: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda text: all(predicate(text) for predicate in predicates)


def nfc_stable(text: str) -> bool:
    """NFC by Python's (newer) Unicode tables equals the text: sidesteps normalizers built on older tables."""
    return unicodedata.normalize("NFC", text) == text


def texts(profile: Profile, *, max_size: int = 24) -> st.SearchStrategy[str]:
    plain = st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=max_size)
    tricky = st.lists(st.sampled_from(_TRICKY), max_size=3).map("".join)
    mixed = st.lists(st.one_of(tricky, ascii_text, plain), max_size=3).map("".join)
    return st.one_of(ascii_text, plain, tricky, mixed).filter(profile.text_ok)


def _png(width: int, height: int, shade: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 255 - shade, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_images() -> st.SearchStrategy[bytes]:
    """Small PNG files of various sizes (aspect ratio below 50)."""
    sizes = st.tuples(st.integers(8, 900), st.integers(8, 900)).filter(lambda wh: max(wh) / min(wh) < 50)
    return st.builds(lambda wh, shade: _png(wh[0], wh[1], shade), sizes, st.integers(0, 255))


def _arguments(profile: Profile) -> st.SearchStrategy[str]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), texts(profile, max_size=8))
    return st.dictionaries(_NAMES, scalars, max_size=3).map(json.dumps).filter(profile.text_ok)


def _spec(profile: Profile) -> st.SearchStrategy[ToolSpec]:
    description = texts(profile, max_size=16)
    if profile.ascii_specs:
        description = description.filter(str.isascii)
    schema = st.lists(_NAMES, max_size=3, unique=True).map(
        lambda props: {"type": "object", "properties": {key: {"type": "string"} for key in props}}
    )
    return st.builds(ToolSpec.create, _NAMES, description, schema)


@st.composite
def _content(
    draw: st.DrawFn, profile: Profile, role: str, *, thinking: bool, need_text: bool
) -> str | tuple[ContentPart, ...]:
    text = texts(profile)
    if need_text:
        text = text.filter(bool)
    if profile.assistant_thinking and role == "assistant":
        return (ThinkingPart(draw(texts(profile).filter(bool))), TextPart(draw(texts(profile).filter(bool))))
    if role in profile.single_text_roles:
        value = draw(text)
        return (TextPart(value),) if profile.parts and draw(st.booleans()) else value
    if not profile.parts or not draw(st.booleans()):
        if thinking and role == "assistant" and draw(st.booleans()):
            return (ThinkingPart(draw(texts(profile))), TextPart(draw(text)))
        return draw(text)
    if profile.thinking_first and role == "assistant":
        head: list[ContentPart] = [ThinkingPart(draw(texts(profile)))] if thinking and draw(st.booleans()) else []
        body = [TextPart(draw(texts(profile))) for _ in range(draw(st.integers(0, 1)))]
        if need_text and not any(p.text for p in body):
            body.append(TextPart(draw(text)))
        return (*head, *body)
    kinds = ["text", "thinking"] if thinking and role == "assistant" else ["text"]
    if profile.images and role == "user":
        kinds.append("image")
    parts: list[ContentPart] = []
    for kind in draw(st.lists(st.sampled_from(kinds), max_size=3)):
        if kind == "image":
            parts.append(ImagePart(draw(png_images())))
        else:
            parts.append(ThinkingPart(draw(texts(profile))) if kind == "thinking" else TextPart(draw(texts(profile))))
    if need_text and not any(isinstance(p, TextPart) and p.text for p in parts):
        parts.append(TextPart(draw(text)))
    return tuple(parts)


@st.composite
def conversations(draw: st.DrawFn, profile: Profile) -> Conversation:
    """A chat-shaped conversation the profile allows: optional system prompt, then user/assistant turns with
    tool calls answered by tool results."""
    count = draw(st.integers(profile.min_messages, profile.max_messages))
    messages: list[Message] = []
    if "system" in profile.roles and draw(st.booleans()):
        system = texts(profile).filter(bool) if profile.system_text else texts(profile)
        messages.append(Message(role="system", content=draw(system)))
    role = "user"
    call_counter = 0
    while len(messages) < count:
        if role == "user":
            choices = ["user"] + (["system"] if "system" in profile.roles and not profile.system_first_only else [])
            actual = draw(st.sampled_from(choices))
            messages.append(
                Message(role=actual, content=draw(_content(profile, actual, thinking=False, need_text=False)))
            )  # type: ignore[arg-type]
            role = "assistant"
            continue
        calls: tuple[ToolCall, ...] = ()
        if profile.tools and draw(st.integers(0, 2)) == 0:
            n_calls = draw(st.integers(1, profile.max_calls))
            calls = tuple(
                ToolCall(name=draw(_NAMES), arguments=draw(_arguments(profile)), id=f"call_{call_counter + i}")
                for i in range(n_calls)
            )
            call_counter += n_calls
        if calls and profile.calls_without_text:
            content: str | tuple[ContentPart, ...] = ""
        else:
            content = draw(_content(profile, "assistant", thinking=profile.thinking, need_text=profile.assistant_text))
        messages.append(Message(role="assistant", content=content, tool_calls=calls))
        if calls:
            for call in calls:
                if len(messages) >= count + 2:
                    break
                name = call.name if profile.tool_names else None
                messages.append(Message(role="tool", content=draw(texts(profile)), tool_call_id=call.id, name=name))
            role = "assistant"
        else:
            role = "user"
    if profile.last_assistant and messages[-1].role != "assistant":
        if messages[-1].role == "system":
            messages.append(Message(role="user", content=draw(texts(profile))))
        messages.append(
            Message(
                role="assistant",
                content=draw(
                    _content(profile, "assistant", thinking=profile.thinking, need_text=profile.assistant_text)
                ),
            )
        )
    messages = _apply_turn_rules(profile, messages)
    specs: tuple[ToolSpec, ...] = ()
    if profile.tools and profile.specs and draw(st.booleans()):
        specs = tuple(draw(st.lists(_spec(profile), max_size=2, unique_by=lambda spec: spec.name)))
    return Conversation(messages=tuple(messages), tools=specs)


def _apply_turn_rules(profile: Profile, messages: list[Message]) -> list[Message]:
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    result: list[Message] = []
    for index, message in enumerate(messages):
        is_last = index == len(messages) - 1
        mid_turn = profile.no_thinking_mid_turn and index > last_user
        if (
            (mid_turn or profile.thinking_last_only)
            and message.role == "assistant"
            and not is_last
            and isinstance(message.content, tuple)
        ):
            message = attrs.evolve(
                message, content=tuple(p for p in message.content if not isinstance(p, ThinkingPart))
            )
        if (
            profile.thinking_with_text
            and message.role == "assistant"
            and message.tool_calls
            and message.thinking() is not None
            and not message.text()
        ):
            message = attrs.evolve(message, content=(*message.content, TextPart("ok")))  # type: ignore[misc]
        result.append(message)
    return result


def with_trainable(conversation: Conversation, flags: list[bool]) -> Conversation:
    messages = tuple(
        attrs.evolve(message, trainable=flags[i % len(flags)] if flags else False)
        for i, message in enumerate(conversation.messages)
    )
    return attrs.evolve(conversation, messages=messages)
