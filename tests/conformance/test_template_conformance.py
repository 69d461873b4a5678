"""Token-exact conformance with the official chat templates (``transformers.apply_chat_template``), where one is
available offline: Qwen3 (thinking on and off), Llama 3.1 (with its date preamble written as the system
message's start), SmolLM2 (ChatML, from the GGUF) and gpt-oss (clock pinned to the renderer's date).

Templates give ids, not weights; the supervised example must equal the template's rendering of the same
conversation (minus the newline the ChatML templates write after the final end-of-turn token) and the
generation prompt must equal ``add_generation_prompt=True``. DeepSeek V3's template is not available offline
(llama.cpp ships a modified V3.1 variant), so DeepSeek is checked against the cookbook and tml-renderers only.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tinkerflow.chat import Conversation, Message
from tinkerflow.render import RenderError, build_generation_prompt, build_supervised_example, get_renderer
from tinkerflow.shell.io.tokenizers import offline_tokenizer

from . import _hf
from ._compare import DATE, _added
from ._strategies import Profile, all_of, conversations, lstrip_stable, strip_stable

pytestmark = pytest.mark.conformance

EXAMPLES = 1000


def _cases() -> list[tuple[str, str, str, Profile, dict[str, Any], dict[str, Any]]]:
    qwen = Profile(
        roles=("system",),
        thinking=True,
        tools=True,
        text_ok=all_of(_added("qwen3"), lstrip_stable),
        ascii_specs=True,
        thinking_first=True,
        max_calls=1,
        system_first_only=True,
        system_text=True,
        thinking_with_text=True,
        no_thinking_mid_turn=True,
    )
    harmony = Profile(
        roles=("system",),
        thinking=True,
        text_ok=_added("gpt_oss"),
        single_text_roles=("system", "user"),
        thinking_first=True,
        system_first_only=True,
        system_text=True,
        thinking_last_only=True,
    )
    return [
        ("qwen3", "qwen3", "qwen3", qwen, {}, {}),
        (
            "qwen3_disable_thinking",
            "qwen3",
            "qwen3",
            attrs.evolve(qwen, thinking=False),
            {},
            {"enable_thinking": False},
        ),
        (
            "llama3",
            "llama3",
            "llama3.1",
            Profile(roles=("system",), text_ok=all_of(_added("llama3"), strip_stable)),
            {},
            {},
        ),
        (
            "smollm2",
            "smollm2",
            "smollm2",
            Profile(roles=("system",), text_ok=all_of(_added("smollm2"), lstrip_stable)),
            {},
            {},
        ),
        (
            "gpt_oss_medium_reasoning",
            "gpt_oss",
            "gpt_oss",
            harmony,
            {"current_date": DATE},
            {"reasoning_effort": "medium"},
        ),
    ]


CASES = _cases()


def _as_rendered(name: str, conversation: Conversation) -> Conversation:
    """The conversation tinkerflow renders to reproduce the template: Llama 3.1's date preamble is explicit."""
    if name != "llama3":
        return conversation
    messages = conversation.messages
    system = messages[0].text() if messages[0].role == "system" else ""
    rest = messages[1:] if messages[0].role == "system" else messages
    return attrs.evolve(conversation, messages=(Message(role="system", content=_hf.LLAMA_PREAMBLE + system), *rest))


@pytest.mark.parametrize(
    ("name", "tokenizer", "template", "profile", "options", "template_options"), CASES, ids=[c[0] for c in CASES]
)
def test_matches_official_template(
    name: str,
    tokenizer: str,
    template: str,
    profile: Profile,
    options: dict[str, Any],
    template_options: dict[str, Any],
) -> None:
    renderer = get_renderer(name, offline_tokenizer(tokenizer), **options)
    newline = offline_tokenizer(tokenizer).encode("\n")
    seen = [0]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(conversations(profile))
    def check(conversation: Conversation) -> None:
        seen[0] += 1
        ours = build_supervised_example(renderer, _as_rendered(name, conversation)).tokens_T.tolist()
        theirs = _hf.render(template, tokenizer, conversation, generation=False, **template_options)
        if name in ("qwen3", "qwen3_disable_thinking", "smollm2") and theirs[-len(newline) :] == newline:
            theirs = theirs[: -len(newline)]
        assert ours == theirs
        if conversation.messages[-1].role == "assistant" and len(conversation.messages) > 1:
            history = attrs.evolve(conversation, messages=conversation.messages[:-1])
            try:
                prompt: list[int] | None = (
                    build_generation_prompt(renderer, _as_rendered(name, history)).to_tokens().tolist()
                )
            except RenderError:
                prompt = None
            assert prompt == _hf.render(template, tokenizer, history, generation=True, **template_options)

    check()
    assert seen[0] >= EXAMPLES
