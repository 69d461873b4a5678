"""Token-exact conformance of ``tml_v0`` with tinker-cookbook 0.6.1's (an adapter over tml-renderers 0.2.1's ``v0``)
at five thinking efforts on the same 1,000 generated conversations (ids and weights in the four train-on modes the
cookbook accepts, ``customized`` flags, generation prompts of prefixes with and without a prefill, parses of the
rendered last turn and its truncation); parses of 1,000 TML-shaped responses and 300 random samples; the effort
text for every thousandth; tool-call and tool-declaration JSON on generated values; the test vocabulary.

References and tokenizers: the cookbook's ``get_renderer("tml_v0", get_tokenizer("thinkingmachines/Inkling"))``
runs on tml-renderers' compiled ``O200kBaseChatTokenizer``; tinkerflow's renderer runs on the TML v0 test
vocabulary (``_tml_v0.tml_v0_tokenizer_dir``: the offline ``gpt_oss`` vocabulary with its added tokens
199998..200057 renamed to TML v0's), checked here to have the same ids and ordinary encodings.

Documented differences the comparison accounts for: conversations end with an assistant message (the cookbook
drops later messages from a supervised example); ``customized`` compares ours cut after the last trained assistant
message (the cookbook drops what follows it); the modes the cookbook refuses (``all_messages``, ``all_tokens``,
``all_user_and_system_messages``) are not compared.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tinkerflow.chat import Conversation, Message, ToolCall, ToolSpec
from tinkerflow.render import build_generation_prompt
from tinkerflow.render.tml_v0 import CONTROL, effort_text
from tinkerflow.render.tml_v0_json import tool_call_json, tool_declare_json

from ._strategies import texts
from ._tml_v0 import (
    FIRST,
    LAST,
    check_tml_parse,
    check_tml_v0,
    ours,
    profile,
    reference,
    tml_names,
    tml_tokenizer,
    tml_v0_tokenizer,
)
from ._v061 import EXAMPLES, check_sampled_parse

pytestmark = pytest.mark.conformance

EFFORTS = (0.9, 0.5, 0.0, 0.123, 0.999)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def test_matches_cookbook() -> None:
    assert check_tml_v0(EFFORTS, examples=EXAMPLES) >= 1000


def test_tml_shaped_responses_parse_like_the_cookbook() -> None:
    check_tml_parse(ours(), examples=1000)


def test_sampled_responses_parse_like_the_cookbook() -> None:
    check_sampled_parse(ours(), reference(), list(CONTROL), profile(), examples=300)


def test_effort_text_for_every_thousandth() -> None:
    tokenizer = reference().tokenizer
    for thousandths in range(1000):
        effort = thousandths / 1000
        for value in (effort, effort + 0.0004, max(0.0, effort - 0.0004)):
            prompt = tokenizer.decode(reference().build_generation_prompt([], effort=value).to_ints())
            assert prompt.split("level: ")[1].split("<|")[0] == effort_text(value), value


def test_effort_is_validated() -> None:
    from tinkerflow.render import RenderError

    for bad in (1.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(RenderError, match="thinking_effort"):
            ours(thinking_effort=bad)


_KEYS = st.text(max_size=6)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from([1e15, 1e16, 1e-5, 1e-6, 1e-4, 0.1, -0.0, 1e300, 5e-324, 2**63, 2**64, -(2**63) - 1]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
    max_leaves=6,
)


def _between(text: str, opening: str) -> str:
    return text.split(opening)[1].split("<|end_message|>")[0]


def test_tool_call_json_equals_tml_renderers() -> None:
    """Arguments of any JSON shape (nested objects, big integers, floats serde_json reads inexactly)."""
    from tinker_cookbook.renderers.base import ToolCall as CookbookToolCall

    ref = reference()

    @_settings(500)
    @given(st.dictionaries(_KEYS, _VALUES, max_size=4))
    def check(arguments: dict[str, object]) -> None:
        text = json.dumps(arguments)
        call = CookbookToolCall(id="c", function=CookbookToolCall.FunctionBody(name="f", arguments=text))
        messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
        theirs = _between(
            ref.tokenizer.decode(ref.build_generation_prompt(messages).to_ints()), "<|content_invoke_tool_json|>"
        )
        assert tool_call_json("f", json.loads(text)) == theirs

    check()


def test_tool_declaration_json_equals_tml_renderers() -> None:
    """Schemas of any JSON shape with 64-bit integers and floats of up to 6 digits in [1e-4, 1e16) (a known gap
    outside those: tml-renderers re-reads schema numbers and writes some in another float style)."""
    ref = reference()
    short = (
        st.floats(allow_nan=False, allow_infinity=False)
        .map(lambda x: float(f"{x:.6g}"))
        .filter(lambda x: x == 0 or 1e-4 <= abs(x) < 1e16)
    )
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), short, st.text(max_size=8))
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=3)),
        max_leaves=6,
    )
    specs = st.lists(
        st.builds(
            ToolSpec.create,
            st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
            st.text(max_size=8),
            st.dictionaries(_KEYS, values, max_size=4),
        ),
        min_size=1,
        max_size=2,
        unique_by=lambda spec: spec.name,
    )

    @_settings(300)
    @given(specs)
    def check(tools: list[ToolSpec]) -> None:
        declared = [
            {"name": t.name, "description": t.description, "parameters": json.loads(t.parameters)} for t in tools
        ]
        prompt = ref.build_generation_prompt(ref.create_conversation_prefix_with_tools(declared, ""))
        theirs = _between(ref.tokenizer.decode(prompt.to_ints()), "<|content_xml|>")
        assert tool_declare_json(tools) == theirs

    check()


def test_vocabulary_is_tml_v0() -> None:
    tokenizer, tml = tml_v0_tokenizer(), tml_tokenizer()
    names = tml_names()
    assert len(names) == LAST - FIRST + 1 == 60
    for token, text in names.items():
        assert tokenizer.token_id(text) == token == tml.encode_special(text[2:-2])
        assert tokenizer.decode([token]) == text
    assert tokenizer.eos_token_id == tml.encode_special("endoftext")

    @_settings(2000)
    @given(texts(profile(), max_size=40))
    def same_encoding(text: str) -> None:
        assert tokenizer.encode(text) == list(tml.encode_ordinary(text))

    same_encoding()


def test_prompt_of_a_tool_conversation() -> None:
    """One readable case: the layout written out."""
    conversation = Conversation(
        messages=(
            Message(role="system", content="S"),
            Message(role="user", content="U"),
            Message(
                role="assistant", content="", tool_calls=(ToolCall(name="f", arguments='{"b": 2, "a": 1}', id="c"),)
            ),
            Message(role="tool", content="R", tool_call_id="c", name="f"),
        ),
        tools=(ToolSpec.create("f", "d", {"type": "object", "properties": {}}),),
    )
    text = tml_v0_tokenizer().decode(build_generation_prompt(ours(), conversation).to_tokens().tolist())
    assert text == (
        "<|message_system|><|content_text|>S<|end_message|>"
        '<|message_system|>tool_declare<|content_xml|>[{"description":"d","name":"f",'
        '"parameters":{"properties":{},"type":"object"},"type":"function"}]<|end_message|>'
        "<|message_system|><|content_text|>Thinking effort level: 0.9<|end_message|>"
        "<|message_user|><|content_text|>U<|end_message|>"
        '<|message_model|>f<|content_invoke_tool_json|>{"name":"f","args":{"a":1,"b":2}}<|end_message|>'
        "<|content_model_end_sampling|>"
        "<|message_tool|>f<|content_text|>R<|end_message|>"
    )
