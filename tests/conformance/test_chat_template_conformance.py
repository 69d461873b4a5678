"""The generic ``chat_template`` renderer against ``transformers``' ``apply_chat_template`` on official templates
(token ids of supervised examples and generation prompts), and against the dedicated renderers of the same
format (ids and weights).

Templates: the llama-cpp-python 0.3.36 source distribution's copies of the official Qwen3, Qwen2.5, QwQ, Llama
3.1 / 3.2 / 3.3, DeepSeek V3.1 (llama.cpp's variant) and gpt-oss templates, plus SmolLM2's (from its GGUF). A
supervised example is the template's rendering up to the last message's end-of-turn token (ChatML templates
write a ``\\n`` after it, which is left out); the generation prompt is ``add_generation_prompt=True``, exactly.
The renderer refuses (typed) what a template would silently lose (thinking, tool calls or specs it does not
write, messages it drops: gpt-oss ignores a second system message) and control-token spellings in text; the
strategies avoid the first, and the test counts the rest.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tinkerflow.chat import Conversation, Message
from tinkerflow.render import RenderError, TrainOnWhat, build_generation_prompt, build_supervised_example, get_renderer
from tinkerflow.shell.io.tokenizers import offline_tokenizer

from . import _cookbook as cb
from . import _hf, _templates
from ._compare import _added
from ._strategies import Profile, all_of, conversations, lstrip_stable, strip_stable

pytestmark = pytest.mark.conformance

EXAMPLES = 250
DATE = "2026-01-15"
LLAMA_VARS = {"date_string": "26 Jul 2024"}
EXTRA = (
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-QwQ-32B.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja",
)


def _fetch_extra(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "llama-cpp-python==0.3.36", "-d", scratch, "--quiet",
        ]  # fmt: skip
        subprocess.run(command, check=True, timeout=600)
        archive = Path(scratch) / _templates.SDIST
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == _templates.SDIST_SHA256
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/models/templates/" in member.name and name in EXTRA:
                    source = tar.extractfile(member)
                    assert source is not None
                    (folder / name).write_bytes(source.read())


@functools.cache
def official(file: str) -> str:
    """The Jinja text of an official template by its llama.cpp file name (``"smollm2"``: the GGUF's)."""
    if file == "smollm2":
        return _templates.template("smollm2")
    if file in _templates.NAMES:
        _templates.template("qwen3")  # fetches the three base templates when missing
        return (_templates._folder() / file).read_text("utf-8")
    folder = _templates._folder()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / file).is_file():
        _fetch_extra(folder)
    return (folder / file).read_text("utf-8")


def hf_ids(
    source: str, tokenizer: str, conversation: Conversation, generation: bool, variables: dict[str, Any]
) -> list[int]:
    """``apply_chat_template`` ids (the clock of gpt-oss's template pinned to ``DATE``)."""
    hf = cb.hf_tokenizer(tokenizer)
    tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters_dict()},
        }
        for t in conversation.tools
    ] or None
    text = hf.apply_chat_template(
        [_hf._message(m) for m in conversation.messages],
        tools=tools,
        chat_template=source.replace('strftime_now("%Y-%m-%d")', f'"{DATE}"'),
        tokenize=False,
        add_generation_prompt=generation,
        **variables,
    )
    return list(hf(text, add_special_tokens=False)["input_ids"])


@attrs.frozen
class Case:
    file: str
    tokenizer: str
    variables: dict[str, Any] = attrs.field(factory=dict)
    thinking: bool = False
    tools: bool = True


CASES = {
    "qwen3": Case("Qwen-Qwen3-0.6B.jinja", "qwen3", thinking=True),
    "qwen3_enable_thinking_false": Case("Qwen-Qwen3-0.6B.jinja", "qwen3", {"enable_thinking": False}, thinking=True),
    "qwen2.5": Case("Qwen-Qwen2.5-7B-Instruct.jinja", "qwen3"),
    "qwq": Case("Qwen-QwQ-32B.jinja", "qwen3"),
    "llama3.1": Case("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", LLAMA_VARS),
    "llama3.2": Case("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3", LLAMA_VARS),
    "llama3.3": Case("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3", LLAMA_VARS),
    "smollm2": Case("smollm2", "smollm2", tools=False),
    "deepseek_v3.1": Case("deepseek-ai-DeepSeek-V3.1.jinja", "deepseek_v3", tools=False),
    "gpt_oss": Case("openai-gpt-oss-120b.jinja", "gpt_oss", thinking=True),
}


def _renderer(case: Case) -> Any:
    return get_renderer(
        "chat_template",
        offline_tokenizer(case.tokenizer),
        template=official(case.file),
        template_vars=case.variables,
        current_date=DATE,
        tool_arguments="string",  # as the other template tests pass them (_hf._message)
    )


@pytest.mark.parametrize("name", list(CASES))
def test_equals_apply_chat_template(name: str) -> None:
    case = CASES[name]
    renderer = _renderer(case)
    tokenizer = offline_tokenizer(case.tokenizer)
    source = official(case.file)
    profile = Profile(
        roles=("system",),
        thinking=case.thinking and renderer.features.thinking,
        tools=case.tools,
        text_ok=_added(case.tokenizer),
        max_messages=6,
    )
    counts = {"compared": 0, "prompts": 0, "both_refused": 0, "refused": 0}

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
        try:
            theirs: list[int] | None = hf_ids(source, case.tokenizer, conversation, False, case.variables)
        except Exception:  # the template itself refuses (raise_exception, or a Jinja error on this input)
            theirs = None
        try:
            ours = build_supervised_example(renderer, conversation, "all_tokens").tokens_T.tolist()
        except RenderError:
            counts["both_refused" if theirs is None else "refused"] += 1
            return
        assert theirs is not None, "the template refuses what the renderer rendered"
        assert theirs[: len(ours)] == ours
        rest = tokenizer.decode(theirs[len(ours) :])
        assert not rest.strip(), rest  # only the whitespace after the last end-of-turn token is left out
        counts["compared"] += 1
        if conversation.messages[-1].role == "assistant" and len(conversation.messages) > 1:
            history = attrs.evolve(conversation, messages=conversation.messages[:-1])
            try:
                prompt: list[int] | None = build_generation_prompt(renderer, history).to_tokens().tolist()
            except RenderError:
                prompt = None
            try:
                expected: list[int] | None = hf_ids(source, case.tokenizer, history, True, case.variables)
            except Exception:
                expected = None
            assert prompt == expected
            counts["prompts"] += 1

    check()
    total = sum(counts[key] for key in ("compared", "both_refused", "refused"))
    assert total >= EXAMPLES
    assert counts["compared"] >= EXAMPLES // 2, counts
    # gpt-oss's template refuses most generation prompts of generated histories (a second system message,
    # thinking it would drop), so fewer prompts are compared there
    assert counts["prompts"] >= (EXAMPLES // 25 if name == "gpt_oss" else EXAMPLES // 10), counts


def _qwen_profile(thinking: bool) -> Profile:
    return Profile(
        roles=("system",),
        thinking=thinking,
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


DEDICATED = {
    # (dedicated renderer, case, strategy profile, modes whose weights agree, conversation rewrite)
    # all_messages / all_user_and_system_messages differ by design: a tool result's "<tool_response>\n" and a
    # tools block without a system message are template text before a message here (header), output there
    "qwen3": (
        "qwen3",
        CASES["qwen3"],
        _qwen_profile(True),
        (
            TrainOnWhat.LAST_ASSISTANT_MESSAGE,
            TrainOnWhat.LAST_ASSISTANT_TURN,
            TrainOnWhat.ALL_ASSISTANT_MESSAGES,
            TrainOnWhat.ALL_TOKENS,
        ),
    ),
    "llama3": (
        "llama3",
        CASES["llama3.1"],
        Profile(roles=("system",), text_ok=all_of(_added("llama3"), strip_stable)),
        (TrainOnWhat.LAST_ASSISTANT_MESSAGE, TrainOnWhat.LAST_ASSISTANT_TURN, TrainOnWhat.ALL_ASSISTANT_MESSAGES),
    ),
}


def _with_preamble(conversation: Conversation) -> Conversation:
    """Llama 3.1's template writes a date preamble in the system turn; tinkerflow's llama3 renderer (as the
    cookbook's) does not, so its conversation carries the preamble as the system message's start."""
    messages = conversation.messages
    system = messages[0].text() if messages[0].role == "system" else ""
    rest = messages[1:] if messages[0].role == "system" else messages
    return attrs.evolve(conversation, messages=(Message(role="system", content=_hf.LLAMA_PREAMBLE + system), *rest))


@pytest.mark.parametrize("name", list(DEDICATED))
def test_equals_the_dedicated_renderer(name: str) -> None:
    dedicated_name, case, profile, weight_modes = DEDICATED[name]
    ours = _renderer(case)
    theirs = get_renderer(dedicated_name, offline_tokenizer(case.tokenizer))
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
        other = _with_preamble(conversation) if name == "llama3" else conversation
        for mode in TrainOnWhat:
            if mode is TrainOnWhat.CUSTOMIZED:
                continue
            a = build_supervised_example(ours, conversation, mode)
            b = build_supervised_example(theirs, other, mode)
            assert a.tokens_T.tolist() == b.tokens_T.tolist()
            if mode in weight_modes:
                assert np.array_equal(a.weights_T, b.weights_T), mode
        seen[0] += 1

    check()
    assert seen[0] >= EXAMPLES
