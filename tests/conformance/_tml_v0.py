"""The TML v0 test vocabulary and the comparison of ``tml_v0`` with tinker-cookbook 0.6.1's (test-only).

No offline package carries TML v0's vocabulary in Hugging Face form; tml-renderers 0.2.1 has it compiled
(``O200kBaseChatTokenizer``: o200k_base plus 60 special tokens at ids 199998..200057), and the cookbook's ``tml_v0``
runs on that (``get_tokenizer("thinkingmachines/Inkling")``). The offline ``gpt_oss`` vocabulary is o200k_base plus
Harmony's specials at the same ids: renaming its added tokens 199998..200057 to TML v0's spellings gives a
tinkerflow tokenizer with TML v0's real ids (checked in ``test_vocabulary_is_tml_v0``).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation
from tinkerflow.render import Renderer, TrainOnWhat
from tinkerflow.shell.io.tokenizers import load_tokenizer, offline_tokenizer, offline_tokenizer_dir
from tinkerflow.tokenizers import Tokenizer

from ._compare import compare_example, compare_parse
from ._strategies import Profile, conversations, with_trainable, without_spellings
from ._v061 import quiet

FIRST, LAST = 199998, 200057
SUPPORTED = (
    TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    TrainOnWhat.LAST_ASSISTANT_TURN,
    TrainOnWhat.ALL_ASSISTANT_MESSAGES,
    TrainOnWhat.CUSTOMIZED,
)
"""The modes the cookbook's tml_v0 accepts (the others raise ``NotImplementedError`` there)."""


@functools.cache
def tml_tokenizer() -> Any:
    from tml_renderers.tokenizers import O200kBaseChatTokenizer

    return O200kBaseChatTokenizer()


def tml_names() -> dict[int, str]:
    tml = tml_tokenizer()
    return {token: tml.decode([token]) for token in range(FIRST, LAST + 1)}


@functools.cache
def tml_v0_tokenizer_dir() -> Path:
    offline_tokenizer("gpt_oss")
    source = offline_tokenizer_dir("gpt_oss")
    data = json.loads((source / "tokenizer.json").read_text())
    names = tml_names()
    for entry in data["added_tokens"]:
        if entry["id"] in names:
            entry["content"] = names[entry["id"]]
    folder = Path(tempfile.mkdtemp(prefix="tinkerflow-tml_v0-vocab-"))
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["bos_token"] = "<|begin_of_text|>"
    config["eos_token"] = "<|endoftext|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@functools.cache
def tml_v0_tokenizer() -> Tokenizer:
    return load_tokenizer(tml_v0_tokenizer_dir())


def ours(**options: object) -> Renderer:
    from tinkerflow.render.families_v061 import EXTRA_FACTORIES

    return EXTRA_FACTORIES["tml_v0"](tml_v0_tokenizer(), **options)


@functools.cache
def reference() -> Any:
    from tinker_cookbook.renderers import get_renderer
    from tinker_cookbook.tokenizer_utils import get_tokenizer

    return get_renderer("tml_v0", get_tokenizer("thinkingmachines/Inkling"))


def profile() -> Profile:
    """No spelling of the vocabulary's added tokens in text (deliberate difference 1); conversations end with an
    assistant message (the cookbook drops later messages from a supervised example, tinkerflow keeps them at
    weight 0)."""
    return Profile(
        roles=("system",),
        thinking=True,
        tools=True,
        text_ok=without_spellings(tml_v0_tokenizer().added_tokens),
        last_assistant=True,
    )


class _Effort:
    """The cookbook renderer at a fixed effort (its methods take ``effort`` per call)."""

    def __init__(self, renderer: Any, effort: float) -> None:
        self._renderer, self._effort = renderer, effort

    def __getattr__(self, name: str) -> Any:
        return getattr(self._renderer, name)

    def build_supervised_example(self, messages: Any, train_on_what: Any) -> Any:
        return self._renderer.build_supervised_example(messages, train_on_what, effort=self._effort)

    def build_supervised_examples(self, messages: Any, train_on_what: Any) -> Any:
        return self._renderer.build_supervised_examples(messages, train_on_what, effort=self._effort)

    def build_generation_prompt(self, messages: Any, prefill: Any = None) -> Any:
        return self._renderer.build_generation_prompt(messages, prefill=prefill, effort=self._effort)


def cookbook_at(effort: float) -> Any:
    return _Effort(reference(), effort)


def compare_prompt(renderer: Renderer, ref: Any, conversation: Conversation, prefill: str | None) -> str | None:
    """Generation prompts equal, or both refuse (the cookbook raises ``NotImplementedError`` for any prefill)."""
    from tinkerflow.render import RenderError, build_generation_prompt

    from . import _cookbook as cb

    try:
        mine: object = cb.layout(build_generation_prompt(renderer, conversation, prefill=prefill))
    except RenderError:
        mine = "error"
    try:
        theirs: object = cb.layout(
            ref.build_generation_prompt(cb.to_cookbook_messages(ref, conversation), prefill=prefill)
        )
    except (NotImplementedError, ValueError):
        theirs = "error"
    if mine != theirs:
        return f"prompt differs: ours {mine} cookbook {theirs}"
    return None


def compare_customized(renderer: Renderer, ref: Any, conversation: Conversation) -> str | None:
    """``customized``: the cookbook's example ends at the last trained assistant message (tml-renderers'
    ``render_for_sft`` drops what follows) and it refuses a conversation without one; tinkerflow renders every
    message, those after it at weight 0 (documented difference). So ours on the conversation cut after that
    message equals the cookbook's on the whole one, and without one ours has no weight at all."""
    import numpy as np

    from tinkerflow.render import build_supervised_example

    from ._compare import _cookbook_example

    messages = conversation.messages
    trained = [i for i, m in enumerate(messages) if m.role == "assistant" and m.trainable]
    if not trained:
        weights = build_supervised_example(renderer, conversation, TrainOnWhat.CUSTOMIZED).weights_T
        theirs = _cookbook_example(ref, conversation, TrainOnWhat.CUSTOMIZED)
        return None if not weights.any() and isinstance(theirs, str) else "no trained message: both should be empty"
    cut = attrs.evolve(conversation, messages=messages[: trained[-1] + 1])
    full = build_supervised_example(renderer, conversation, TrainOnWhat.CUSTOMIZED)
    short = build_supervised_example(renderer, cut, TrainOnWhat.CUSTOMIZED)
    if full.tokens_T[: short.length].tolist() != short.tokens_T.tolist() or full.weights_T[short.length :].any():
        return "the whole conversation does not extend the cut one at weight 0"
    theirs = _cookbook_example(ref, conversation, TrainOnWhat.CUSTOMIZED)
    if isinstance(theirs, str):
        return f"cookbook refused: {theirs}"
    if short.tokens_T.tolist() != theirs[0] or not np.array_equal(short.weights_T, theirs[1]):
        return "customized example differs"
    return None


def check_tml_v0(efforts: tuple[float, ...], *, examples: int) -> int:
    """Compare ``tml_v0`` at each effort with the cookbook's on ``examples`` generated conversations: supervised
    examples in the four supported modes (``customized`` with random flags), generation prompts of prefixes
    (with and without a prefill), parses of the rendered last turn and of its truncation."""
    renderers = [(ours(thinking_effort=effort), cookbook_at(effort)) for effort in efforts]
    seen = [0]

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        conversations(profile()),
        st.sampled_from(SUPPORTED),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.one_of(st.none(), st.none(), st.sampled_from(["", "x"])),
        st.integers(0, 2),
        st.integers(0, len(efforts) - 1),
    )
    def check(
        conversation: Conversation, mode: TrainOnWhat, flags: list[bool], prefill: str | None, cut: int, pick: int
    ) -> None:
        seen[0] += 1
        renderer, ref = renderers[pick]
        if mode is TrainOnWhat.CUSTOMIZED:
            conversation = with_trainable(conversation, flags)
            assert compare_customized(renderer, ref, conversation) is None
        else:
            assert compare_example(None, renderer, ref, conversation, mode) is None  # type: ignore[arg-type]
        kept = conversation.messages[: max(1, len(conversation.messages) - cut)]
        assert compare_prompt(renderer, ref, attrs.evolve(conversation, messages=kept), prefill) is None
        if mode is not TrainOnWhat.CUSTOMIZED:
            assert compare_parse(renderer, ref, conversation) is None

    with quiet():
        check()
    return seen[0]


@st.composite
def tml_responses(draw: st.DrawFn, renderer: Renderer) -> list[int]:
    """Responses built from TML v0 messages: model messages (text, thinking, tool errors, tool calls with valid,
    malformed or mismatched JSON, header names), now and then a message of another author, stray text or a stray
    control token, end tokens between messages; ended by the stop token, ``<|endoftext|>``, or cut anywhere."""
    import json as _json

    from tinkerflow.render.tml_v0 import CONTROL, END, END_SAMPLING, EOS, INVOKE_JSON, MODEL, TEXT, THINKING

    from ._strategies import texts

    tokenizer = renderer.tokenizer
    ids = {spelling: tokenizer.token_id(spelling) for spelling in (*CONTROL, EOS)}
    prof = profile()
    text = texts(prof, max_size=10)
    names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)
    tokens: list[int] = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "thinking", "call", "call", "error", "other", "stray", "end"]))
        if kind in ("text", "thinking", "error"):
            content = {"text": TEXT, "thinking": THINKING, "error": "<|content_tool_error|>"}[kind]
            name = draw(st.sampled_from(["", "", "x"]))
            tokens += [ids[MODEL], *tokenizer.encode(name), ids[content], *tokenizer.encode(draw(text)), ids[END]]
        elif kind == "call":
            name = draw(names)
            args = draw(
                st.dictionaries(names, st.one_of(st.none(), st.booleans(), st.integers(-99, 99), text), max_size=2)
            )
            body = draw(
                st.sampled_from(
                    [
                        _json.dumps({"name": name, "args": args}),
                        _json.dumps({"name": name, "args": args}, separators=(",", ":")),
                        _json.dumps({"args": args, "name": name}),
                        _json.dumps({"name": name}),
                        _json.dumps({"name": name, "args": [1]}),
                        '{"name": "' + name,
                        _json.dumps([name]),
                    ]
                )
            )
            header = draw(st.sampled_from(["", name, name + "x"]))
            tokens += [ids[MODEL], *tokenizer.encode(header), ids[INVOKE_JSON], *tokenizer.encode(body), ids[END]]
        elif kind == "other":
            author = draw(st.sampled_from(["<|message_user|>", "<|message_system|>", "<|message_tool|>"]))
            tokens += [ids[author], ids[TEXT], *tokenizer.encode(draw(text)), ids[END]]
        elif kind == "stray":
            tokens += draw(
                st.one_of(text.map(tokenizer.encode), st.sampled_from(list(ids.values())).map(lambda t: [t]))
            )
        else:
            tokens.append(ids[END_SAMPLING])
    ending = draw(st.sampled_from(["stop", "stop", "eos", "none", "cut"]))
    if ending == "stop":
        tokens.append(ids[END_SAMPLING])
    elif ending == "eos":
        tokens.append(ids[EOS])
    elif ending == "cut" and tokens:
        tokens = tokens[: draw(st.integers(0, len(tokens) - 1))]
    return tokens


def check_tml_parse(renderer: Renderer, *, examples: int) -> None:
    """Parses of :func:`tml_responses` agree with the cookbook's (message view and termination)."""
    from tinkerflow.render import parse_response

    from ._compare import normalized

    ref = reference()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(tml_responses(renderer))
    def check(tokens: list[int]) -> None:
        parsed = parse_response(renderer, tokens)
        message, termination = ref.parse_response(list(tokens))
        mine = (normalized(parsed.message), parsed.termination.value)
        assert mine == (normalized(message), termination.value), renderer.tokenizer.decode(tokens)

    with quiet():
        check()
