"""The differential check of the renderers added for tinker-cookbook 0.6.1's newer families (test-only).

``check_family`` renders hypothesis-generated conversations with a tinkerflow renderer (built from
``tinkerflow.render.families_v061.EXTRA_FACTORIES``) and with the cookbook's renderer of the same name, and compares
supervised examples (ids and weights, every train-on mode, ``customized`` with random flags), one-example-per-turn
splits, generation prompts of prefixes with prefills, and parses of the rendered last turn (stop-token ended) and
of its truncation (no stop token), as ``test_cookbook_conformance`` does for the older families.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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

from . import _cookbook as cb
from ._compare import compare_example, compare_examples, compare_parse, compare_prompt
from ._strategies import Profile, all_of, conversations, nfc_stable, with_trainable, without_spellings

EXAMPLES = 1000
PREFILLS = ["", "x", " Sure", "\n", "<think>", "<think>\n"]


def qwen_profile(**changes: Any) -> Profile:
    """Conversations over the Qwen3 vocabulary: no control-token spellings in text (tinkerflow keeps them text,
    the cookbook makes them tokens: deliberate difference 1), NFC-stable text."""
    text_ok = all_of(without_spellings(offline_tokenizer("qwen3").added_tokens), nfc_stable)
    return attrs.evolve(Profile(roles=("system",), thinking=True, tools=True, text_ok=text_ok), **changes)


def ours(name: str, tokenizer: str, **options: object) -> Renderer:
    return EXTRA_FACTORIES[name](offline_tokenizer(tokenizer), **options)


@contextmanager
def quiet() -> Iterator[None]:
    logging.disable(logging.WARNING)  # the cookbook warns on every non-extension all_assistant_messages call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def check_family(
    renderer: Renderer,
    reference: Any,
    profile: Profile,
    *,
    examples: int = EXAMPLES,
    adjust: Callable[[Conversation], Conversation] = lambda conversation: conversation,
    customized: bool = True,
    adjust_customized: Callable[[Conversation], Conversation] = lambda conversation: conversation,
) -> int:
    """Compare on ``examples`` generated conversations; returns how many were compared (asserts on the first
    mismatch). ``adjust`` maps a generated conversation into the domain both can write (documented);
    ``adjust_customized`` does so for the ``customized`` mode only (before the flags are drawn);
    ``customized=False`` leaves that mode out."""
    seen = [0]
    modes = [mode for mode in TrainOnWhat if customized or mode is not TrainOnWhat.CUSTOMIZED]

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
        st.sampled_from(modes),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.one_of(st.none(), st.sampled_from(PREFILLS)),
        st.integers(0, 2),
    )
    def check(conversation: Conversation, mode: TrainOnWhat, flags: list[bool], prefill: str | None, cut: int) -> None:
        seen[0] += 1
        conversation = adjust(conversation)
        if mode is TrainOnWhat.CUSTOMIZED:
            conversation = with_trainable(adjust_customized(conversation), flags)
        # compare_example's family argument is unused by the comparison itself
        assert compare_example(None, renderer, reference, conversation, mode) is None  # type: ignore[arg-type]
        if mode in (TrainOnWhat.LAST_ASSISTANT_TURN, TrainOnWhat.ALL_ASSISTANT_MESSAGES):
            assert compare_examples(renderer, reference, conversation, mode) is None
        kept = conversation.messages[: max(1, len(conversation.messages) - cut)]
        assert compare_prompt(renderer, reference, attrs.evolve(conversation, messages=kept), prefill) is None
        assert compare_parse(renderer, reference, conversation) is None

    with quiet():
        check()
    return seen[0]


@st.composite
def sampled_responses(draw: st.DrawFn, renderer: Renderer, controls: list[str], profile: Profile) -> list[int]:
    """What a model might sample: ordinary text and the family's control tokens in any order, ended by the stop
    token, the tokenizer's EOS token, or nothing (cut off at max tokens)."""
    from ._strategies import texts

    tokenizer = renderer.tokenizer
    ids = [tokenizer.token_id(text) for text in controls]
    pieces = st.one_of(texts(profile).map(tokenizer.encode), st.sampled_from(ids).map(lambda token: [token]))
    tokens = [token for piece in draw(st.lists(pieces, max_size=8)) for token in piece]
    ending = draw(st.sampled_from(["stop", "eos", "none"]))
    if ending == "stop":
        tokens.append(renderer.stop_sequences().tokens[0])
    elif ending == "eos" and tokenizer.eos_token_id is not None:
        tokens.append(tokenizer.eos_token_id)
    return tokens


def check_sampled_parse(
    renderer: Renderer, reference: Any, controls: list[str], profile: Profile, *, examples: int = 300
) -> None:
    """Parses of generated samples agree (message view and termination, or both refuse)."""
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
    @given(sampled_responses(renderer, controls, profile))
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


def with_system_message(conversation: Conversation) -> Conversation:
    """An empty system message first when there is none and no tools declare one: for renderers that add it
    themselves (Nemotron-3), whose cookbook counterpart then has no ``trainable`` flag on it and refuses the
    ``customized`` mode (the flags are drawn for it instead)."""
    from tinkerflow.chat import Message

    messages = conversation.messages
    if conversation.tools or (messages and messages[0].role == "system"):
        return conversation
    return attrs.evolve(conversation, messages=(Message(role="system", content=""), *messages))


def cookbook(name: str, tokenizer: str, **kwargs: Any) -> Any:
    return cb.cookbook_renderer(name, tokenizer, **kwargs)


GLM_CONTROL = (
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
)
"""GLM-5.3's control tokens the Qwen3 vocabulary lacks (it has ``<|endoftext|>``, ``<think>``, ``</think>``,
``<tool_call>``, ``</tool_call>``, ``<tool_response>``, ``</tool_response>``)."""


def qwen3_vocabulary_with(controls: Sequence[str], name: str, *, eos: str | None = None) -> Path:
    """A test vocabulary folder: the offline Qwen3 ``tokenizer.json`` plus ``controls`` as special tokens (ids from
    151669 on, in order), its ``tokenizer_config.json`` with ``eos_token`` set to ``eos`` when given."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    offline_tokenizer("qwen3")
    source = offline_tokenizer_dir("qwen3")
    folder = Path(tempfile.mkdtemp(prefix=f"tinkerflow-{name}-vocab-"))
    backend = HFTokenizer.from_file(str(source / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in controls])
    backend.save(str(folder / "tokenizer.json"))
    config = json.loads((source / "tokenizer_config.json").read_text())
    if eos is not None:
        config["eos_token"] = eos
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@functools.cache
def glm_test_tokenizer_dir() -> Path:
    """A test vocabulary for GLM-5.3: the offline Qwen3 vocabulary plus :data:`GLM_CONTROL` as special tokens
    (ids 151669..151678), EOS ``<|endoftext|>``. No offline package carries GLM-5.3's vocabulary in Hugging Face
    form (tml-renderers 0.2.1 has a compiled ``GlmTokenizer``): it spells every GLM-5.3 control token exactly, so
    the comparison is structural, token for token (ordinary text is encoded by Qwen3's BPE in both renderers)."""
    return qwen3_vocabulary_with(GLM_CONTROL, "glm5_3", eos="<|endoftext|>")


@functools.cache
def glm_tokenizers() -> tuple[Tokenizer, Any]:
    """The GLM-5.3 test vocabulary as a tinkerflow tokenizer and as a transformers tokenizer (for the cookbook)."""
    from transformers import AutoTokenizer

    folder = glm_test_tokenizer_dir()
    return load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder), clean_up_tokenization_spaces=False)
