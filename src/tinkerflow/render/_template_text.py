"""Chat-template text for the ``chat_template`` renderer: a Jinja environment that renders as Hugging Face's
``apply_chat_template`` does, the conversion of messages and tool specs to the template's dictionaries, where each
message lies in a rendered conversation, and tokenizing a rendering with cut points.

Pure: templates are strings compiled in a sandbox (no file, clock or network access); the clock a template may
ask for (``strftime_now``) is a date the caller fixes.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from tinkerflow.chat import Message, TextPart, ThinkingPart, ToolCall, ToolSpec
from tinkerflow.render.records import RenderError
from tinkerflow.tokenizers import Tokenizer

__all__ = [
    "Located",
    "TemplateCall",
    "common_prefix",
    "common_suffix",
    "compile_template",
    "encode_with_cuts",
    "locate_contents",
    "message_dicts",
    "probe_variant",
    "tool_dicts",
]

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

WHERE = "render[chat_template]"


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """JSON without HTML escaping and with non-ASCII kept, as chat templates expect."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    """The sandboxed environment chat templates render in (jinja2 is imported on first use)."""
    try:
        import jinja2
        import jinja2.ext
        from jinja2 import nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:  # pragma: no cover - jinja2 comes with the test and dev environments
        raise RenderError(WHERE, "template", "rendering a chat template needs jinja2.", "pip install jinja2") from error

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (templates that mark assistant text): its body as is."""

        tags = {"generation"}  # noqa: RUF012 - the attribute Jinja reads

        def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller: Callable[[], str]) -> str:
            return caller()

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    return environment


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached by its text); a :class:`RenderError` for a template Jinja cannot read."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateError as error:
        raise RenderError(WHERE, "template", f"is not a valid Jinja template ({error}).", "") from error


@attrs.frozen
class TemplateCall:
    """A compiled template and the variables every rendering passes (special tokens, options, the date)."""

    template: jinja2.Template
    variables: Mapping[str, object]
    current_date: datetime.date | None
    bos_text: str | None
    arguments_as_object: bool = True

    def render(self, messages: Sequence[Message], tools: Sequence[ToolSpec], *, generation: bool) -> str:
        """The template's text for ``messages`` (BOS spelling removed when the renderer writes it as a token).

        Raises:
            RenderError: the template raised (its message quoted), or asked for the date when none was given.
        """
        values: dict[str, object] = dict(self.variables)
        if self.current_date is not None:
            values["strftime_now"] = self._strftime
        import jinja2

        specs = tool_dicts(tools)
        try:
            text = self.template.render(
                messages=message_dicts(messages, arguments_as_object=self.arguments_as_object),
                tools=specs or None,
                add_generation_prompt=generation,
                **values,
            )
        except jinja2.exceptions.UndefinedError as error:
            fix = (
                "pass current_date='YYYY-MM-DD' (the template reads the clock)" if "strftime_now" in str(error) else ""
            )
            raise RenderError(
                WHERE, "template", f"failed: {error}.", fix or "pass the variable in template_vars."
            ) from error
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, IndexError) as error:
            raise RenderError(
                WHERE, "messages", f"the chat template refused the conversation: {error}", "change the conversation."
            ) from error
        if self.bos_text is not None and text.startswith(self.bos_text):
            return text[len(self.bos_text) :]
        return text

    def _strftime(self, format: str) -> str:
        assert self.current_date is not None
        return self.current_date.strftime(format)


def _arguments(call: ToolCall, index: int, call_index: int, as_object: bool) -> object:
    if not as_object:
        return call.arguments
    try:
        return json.loads(call.arguments)
    except ValueError as error:
        raise RenderError(
            WHERE,
            f"messages[{index}].tool_calls[{call_index}].arguments",
            f"is not valid JSON ({error}); the template receives arguments as an object.",
            "fix the JSON, or create the renderer with tool_arguments='string'.",
        ) from error


def message_dicts(messages: Sequence[Message], *, arguments_as_object: bool = True) -> list[dict[str, object]]:
    """Messages as chat-template dictionaries (``role``, ``content``, ``reasoning_content`` / ``thinking``,
    ``tool_calls``, ``tool_call_id``, ``name``), the Hugging Face conventions."""
    result: list[dict[str, object]] = []
    for index, message in enumerate(messages):
        entry: dict[str, object] = {"role": message.role, "content": message.text()}
        thinking = message.thinking()
        if thinking:
            entry["reasoning_content"] = thinking
            entry["thinking"] = thinking
        if message.tool_calls:
            calls: list[dict[str, object]] = []
            for call_index, call in enumerate(message.tool_calls):
                function = {"name": call.name, "arguments": _arguments(call, index, call_index, arguments_as_object)}
                calls.append({"type": "function", **({"id": call.id} if call.id else {}), "function": function})
            entry["tool_calls"] = calls
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.name is not None:
            entry["name"] = message.name
        result.append(entry)
    return result


def tool_dicts(tools: Sequence[ToolSpec]) -> list[dict[str, object]]:
    """Tool specs as ``{"type": "function", "function": {name, description, parameters}}``."""
    return [
        {
            "type": "function",
            "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters_dict()},
        }
        for tool in tools
    ]


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search over slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the longest common suffix of ``a`` and ``b``, at most ``limit``."""
    low, high = 0, min(len(a), len(b), limit)
    while low < high:
        middle = (low + high + 1) // 2
        if a[len(a) - middle :] == b[len(b) - middle :]:
            low = middle
        else:
            high = middle - 1
    return low


def _other(text: str) -> str:
    """One character that differs from both ends of ``text`` (stripped), to mark where it is rendered."""
    stripped = text.strip()
    for candidate in "@#%":
        if not stripped or (stripped[0] != candidate and stripped[-1] != candidate):
            return candidate
    return "&"  # pragma: no cover - three candidates cannot all sit at the two ends


def probe_variant(message: Message) -> Message:
    """``message`` with every text it carries (content, thinking, tool-call arguments) replaced by a different,
    non-empty one: rendering it instead shows where the template writes the message."""
    text = _other(message.text())
    thinking = message.thinking()
    content: str | tuple[ThinkingPart | TextPart, ...] = (
        (ThinkingPart(thinking=_other(thinking)), TextPart(text=text)) if thinking else text
    )
    calls = tuple(
        attrs.evolve(call, arguments='{"#": 0}' if call.arguments == '{"@": 0}' else '{"@": 0}')
        for call in message.tool_calls
    )
    return attrs.evolve(message, content=content, tool_calls=calls)


@attrs.frozen
class Located:
    """Where message ``i``'s own text lies in a rendering: ``starts[i]`` to ``ends[i]`` (character offsets)."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]


def locate_contents(call: TemplateCall, messages: Sequence[Message], tools: Sequence[ToolSpec], full: str) -> Located:
    """For each message, the span of ``full`` (the rendering of ``messages``) that changes when the message's
    texts change: the first and last differing characters between ``full`` and the rendering with that message
    replaced by :func:`probe_variant`.

    Raises:
        RenderError: the spans are out of order (the template writes a message's text out of its place, or more
            than once), so message boundaries cannot be told apart.
    """
    starts: list[int] = []
    ends: list[int] = []
    for index, message in enumerate(messages):
        probe = [*messages[:index], probe_variant(message), *messages[index + 1 :]]
        other = call.render(probe, tools, generation=False)
        if other == full:
            raise RenderError(
                WHERE,
                f"messages[{index}]",
                "the chat template does not write this message (its text would be lost).",
                "remove the message, or use a renderer whose format has a place for it.",
            )
        start = common_prefix(full, other)
        end = len(full) - common_suffix(full, other, min(len(full), len(other)) - start)
        if starts and start < ends[-1]:
            raise RenderError(
                WHERE,
                f"messages[{index}]",
                "the chat template does not write this message after the previous one (it moves or repeats "
                "message text), so the message boundaries (and the weights) cannot be derived.",
                "use a dedicated renderer for this model, or build the example from tokens yourself.",
            )
        starts.append(start)
        ends.append(end)
    return Located(tuple(starts), tuple(ends))


def encode_with_cuts(
    tokenizer: Tokenizer, pattern: re.Pattern[str] | None, text: str, cuts: Sequence[int]
) -> tuple[list[int], list[int]]:
    """``text`` encoded as ``apply_chat_template`` does (added-token spellings are the tokens, the text between
    them encoded as a whole), and the token index of each character offset in ``cuts`` (non-decreasing). A cut
    inside a token gives that token to the right-hand side."""
    added = tokenizer.added_tokens
    spans: list[tuple[int, int, int | None]] = []
    position = 0
    for match in pattern.finditer(text) if pattern is not None else ():
        if match.start() > position:
            spans.append((position, match.start(), None))
        spans.append((match.start(), match.end(), added[match.group(0)]))
        position = match.end()
    if position < len(text):
        spans.append((position, len(text), None))
    requests: list[str] = []
    for start, end, token in spans:
        if token is None:
            requests.append(text[start:end])
            requests.extend(text[start:cut] for cut in cuts if start < cut < end)
    encoded = iter(tokenizer.encode_batch(requests) if requests else [])
    tokens: list[int] = []
    at: dict[int, int] = {}
    for start, end, token in spans:
        at.setdefault(start, len(tokens))
        if token is not None:
            at.update((cut, len(tokens)) for cut in cuts if start < cut < end)  # inside a spelling: token goes right
            tokens.append(token)
            continue
        run = next(encoded)
        for cut in cuts:
            if start < cut < end:
                prefix = next(encoded)
                shared = next((i for i, (x, y) in enumerate(zip(prefix, run, strict=False)) if x != y), None)
                at[cut] = len(tokens) + (min(len(prefix), len(run)) if shared is None else shared)
        tokens.extend(run)
    at.setdefault(len(text), len(tokens))
    result: list[int] = []
    for cut in cuts:
        result.append(max(at[cut], result[-1]) if result else at[cut])
    return tokens, result
