"""conversation_datum is a pipeline stage as it is, and equals tinker-cookbook's conversation_to_datum;
conversation_datums (the batch API) equals conversation_datum one by one, exactly, errors included."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from tests.helpers import cached_tokenizer, writable_messages

from tinkerflow import Conversation, Message
from tinkerflow import testing as tft
from tinkerflow.chat import Role
from tinkerflow.datum import Datum
from tinkerflow.errors import TinkerflowError
from tinkerflow.interop import datum_to_tinker
from tinkerflow.pipeline import Pipeline, compose, length_filter, stage
from tinkerflow.render import (
    Renderer,
    TrainOnWhat,
    build_supervised_batch,
    build_supervised_example,
    get_renderer,
)
from tinkerflow.render.packing import packed_batches
from tinkerflow.render.plan import last_user_index, message_contexts
from tinkerflow.render.records import RenderContext
from tinkerflow.shell.io import prefetch
from tinkerflow.supervised import conversation_datum, conversation_datums

# (renderer name, offline tokenizer name); qwen3_vl exercises image chunks in the batch path
_FAMILIES = {
    "llama3": "llama3",
    "qwen3": "qwen3",
    "qwen3_disable_thinking": "qwen3",
    "qwen3_instruct": "qwen3",
    "qwen3_vl": "qwen3",
    "role_colon": "llama3",
    "deepseekv3": "deepseek_v3",
    "qwen3_5": "qwen3",  # the Qwen3 vocabulary spells every control token the Qwen3.5 format writes
    "qwen3_5_disable_thinking": "qwen3",
}


@functools.cache
def _get(name: str) -> Renderer:
    return get_renderer(name, cached_tokenizer(_FAMILIES[name]))


def _renderer() -> Renderer:
    return _get("llama3")


@functools.cache
def _cookbook(name: str) -> Any:
    from tests.conformance._cookbook import cookbook_renderer

    return cookbook_renderer(name, _FAMILIES[name])


@functools.cache
def _plain_text(name: str) -> Any:
    """Text both can write: no control-token spelling (plain text here, a control token in the cookbook's llama3:
    a documented difference) and NFC-stable (the Qwen3 tokenizer normalizes; see docs/rendering.md)."""
    from tests.conformance._strategies import all_of, nfc_stable, without_spellings

    return all_of(without_spellings(_get(name).tokenizer.added_tokens), nfc_stable)


@pytest.fixture(autouse=True)
def _quiet_cookbook() -> Iterator[None]:
    logging.disable(logging.WARNING)  # the cookbook warns on every non-extension ALL_ASSISTANT_MESSAGES call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def test_conversation_datum_is_a_stage_in_a_pipeline() -> None:
    to_datum = stage(functools.partial(conversation_datum, renderer=_renderer(), max_length=64))
    conversations = [
        Conversation(messages=(Message(role="user", content=f"q{i}"), Message(role="assistant", content="a")))
        for i in range(10)
    ]
    pipeline = Pipeline.from_source(conversations).then(compose(to_datum, length_filter(max_tokens=64))).batch(4)
    batches = list(pipeline)
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert all(
        datum.weights_T is not None and np.isclose(datum.weights_T.sum(), 1.0) for batch in batches for datum in batch
    )
    assert "conversation_datum" in pipeline.describe()


@settings(max_examples=30)
@given(tft.conversations(tools=False, parts=False, max_messages=5))
def test_matches_cookbook_conversation_to_datum(conversation: Conversation) -> None:
    # special-token text in content is plain text here, a control token in the cookbook (a documented difference)
    assume(not any("<|" in message.text() for message in conversation.messages))
    cookbook_data = pytest.importorskip("tinker_cookbook.supervised.data")
    from tests.conformance._cookbook import to_cookbook_messages

    reference_renderer = _cookbook("llama3")
    expected = cookbook_data.conversation_to_datum(
        to_cookbook_messages(reference_renderer, conversation), reference_renderer, 256
    )
    ours = datum_to_tinker(conversation_datum(conversation, renderer=_renderer(), max_length=256))
    assert ours.model_input.to_ints() == expected.model_input.to_ints()
    for key in ("target_tokens", "weights"):
        np.testing.assert_allclose(
            ours.loss_fn_inputs[key].to_numpy(), expected.loss_fn_inputs[key].to_numpy(), rtol=1e-6
        )


# -- the batch API --------------------------------------------------------------------------------------------


def test_batch_worked_example() -> None:
    renderer = _renderer()
    chat = Conversation(messages=(Message(role="user", content="hi"), Message(role="assistant", content="hello")))
    long_chat = Conversation(
        messages=(
            Message(role="user", content="one two three"),
            Message(role="assistant", content="four five six seven"),
            Message(role="user", content="eight"),
            Message(role="assistant", content="nine"),
        )
    )
    datums = conversation_datums([chat, long_chat, chat], renderer=renderer, max_length=20, batch_size=2)
    assert datums == [conversation_datum(c, renderer=renderer, max_length=20) for c in (chat, long_chat, chat)]
    assert [datum.length for datum in datums] == [
        build_supervised_example(renderer, chat).length - 1,
        19,
        build_supervised_example(renderer, chat).length - 1,
    ]
    for datum in datums:
        assert datum.weights_T is not None
        assert datum.weights_T.dtype == np.float32
        assert np.isclose(datum.weights_T.sum(), 1.0)  # mean reduction
        assert not datum.target_tokens_T.flags.writeable
    assert conversation_datums([], renderer=renderer) == []


_MODES = st.sampled_from(list(TrainOnWhat))
_MAX_LENGTHS = st.one_of(st.none(), st.integers(0, 80))  # below 2: an error
_REDUCTIONS = st.sampled_from(["mean", "none", "sum", "mean", "none", "sum", "mean", "median"])  # "median": an error


_TEXT_ONLY = frozenset({"llama3", "role_colon"})  # no tool calls, thinking or parts in their formats


@st.composite
def _batch(draw: st.DrawFn, name: str, mode: TrainOnWhat) -> list[Conversation]:
    """Conversations ``name`` can mostly write (images for qwen3_vl), with ``trainable`` flags on every message
    exactly when ``mode`` is ``customized``, except now and then (an error case)."""
    rich = name not in _TEXT_ONLY
    conversations = draw(
        st.lists(
            tft.conversations(max_messages=5, tools=rich, parts=rich, images=name == "qwen3_vl"),
            max_size=5,
        ),
    )
    result = []
    for conversation in conversations:
        messages = writable_messages(conversation.messages)  # flags are set below: few errors
        if (mode is TrainOnWhat.CUSTOMIZED) != (draw(st.integers(0, 49)) == 23):  # rarely the wrong way
            flags = draw(st.lists(st.booleans(), min_size=len(messages), max_size=len(messages)))
            messages = tuple(attrs.evolve(m, trainable=f) for m, f in zip(messages, flags, strict=True))
        result.append(attrs.evolve(conversation, messages=messages))
    return result


def _outcome(call: Any) -> list[Datum] | tuple[type[BaseException], str]:
    try:
        return call()  # type: ignore[no-any-return]
    except TinkerflowError as error:
        return type(error), str(error)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.sampled_from(sorted(_FAMILIES)), _MODES, _MAX_LENGTHS, _REDUCTIONS, st.integers(1, 4))
def test_batch_equals_one_by_one(
    data: st.DataObject, name: str, mode: TrainOnWhat, max_length: int | None, reduction: Any, batch_size: int
) -> None:
    """Same datums, exactly (tokens, dtypes, float32 weights), or the same error for the first bad conversation."""
    renderer = _get(name)
    conversations = data.draw(_batch(name, mode))
    settings_ = {"renderer": renderer, "train_on": mode, "max_length": max_length, "reduction": reduction}
    expected = _outcome(lambda: [conversation_datum(c, **settings_) for c in conversations])
    actual = _outcome(lambda: conversation_datums(conversations, batch_size=batch_size, **settings_))
    assert actual == expected
    event("datums" if isinstance(expected, list) else f"error: {expected[0].__name__}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.data(),
    st.sampled_from(sorted(_FAMILIES)),
    _MODES,
    _MAX_LENGTHS,
    _REDUCTIONS,
    st.integers(1, 4),
    st.integers(1, 3),
)
def test_overlapped_equals_sequential(
    data: st.DataObject,
    name: str,
    mode: TrainOnWhat,
    max_length: int | None,
    reduction: Any,
    batch_size: int,
    workers: int,
) -> None:
    """conversation_datums with the shell's overlapped packer (tokenizer on helper threads) equals the sequential
    one: the same datums, exactly, or the same error; and its packed batches are the core's, batch for batch, with
    one or several helper threads."""
    renderer = _get(name)
    conversations = data.draw(_batch(name, mode))
    settings_ = {"renderer": renderer, "train_on": mode, "max_length": max_length, "reduction": reduction}
    expected = _outcome(lambda: conversation_datums(conversations, batch_size=batch_size, **settings_))
    actual = _outcome(
        lambda: conversation_datums(conversations, batch_size=batch_size, packer=prefetch.packed_batches, **settings_)
    )
    assert actual == expected
    sequential = _outcome(lambda: list(packed_batches(renderer, conversations, mode, batch_size=batch_size)))
    overlapped = _outcome(
        lambda: list(prefetch.packed_batches(renderer, conversations, mode, batch_size=batch_size, workers=workers))
    )
    if isinstance(sequential, list) and isinstance(overlapped, list):
        assert len(overlapped) == len(sequential)
        for ours, theirs in zip(overlapped, sequential, strict=True):
            for field in ("tokens_N", "weights_N", "offsets"):
                np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))
                assert getattr(ours, field).dtype == getattr(theirs, field).dtype
            assert ours.images == theirs.images
    else:
        assert overlapped == sequential


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(sorted(_FAMILIES)), _MODES, st.integers(1, 4))
def test_build_supervised_batch_equals_one_by_one(
    data: st.DataObject, name: str, mode: TrainOnWhat, batch_size: int
) -> None:
    renderer = _get(name)
    conversations = data.draw(_batch(name, mode))
    expected = _outcome(lambda: [build_supervised_example(renderer, c, mode) for c in conversations])
    actual = _outcome(lambda: list(build_supervised_batch(renderer, conversations, mode, batch_size=batch_size)))
    assert actual == expected


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(
        [
            "llama3",
            "qwen3",
            "qwen3_disable_thinking",
            "qwen3_instruct",
            "qwen3_vl",
            "role_colon",
            "qwen3_5",
            "qwen3_5_disable_thinking",
        ]
    ),
    tft.conversations(max_messages=6),
    st.booleans(),
)
def test_render_units_is_render_message(name: str, conversation: Conversation, plain: bool) -> None:
    """A family's render_units fast path gives exactly render_message's pieces, or declines (None)."""
    renderer = _get(name)
    messages = conversation.messages
    tools = () if plain else conversation.tools
    if plain:  # mostly plain text, which the fast paths take
        messages = tuple(
            Message(role=m.role if m.role != "tool" else "user", content=m.text()) for m in conversation.messages
        )
    try:
        renderer.validate(messages, tools)
    except TinkerflowError:
        assume(False)
    messages = renderer.prepare(messages, tools)
    last_user = last_user_index(messages)
    units = renderer.render_units(messages, last_user, tools)
    if name in ("qwen3_vl", "role_colon"):
        assert units is None  # qwen3_vl writes messages its own way; role_colon has stop overlaps
        return
    if plain and not tools:
        assert units is not None
    if units is None:
        return
    contexts = message_contexts(messages, last_user_index(messages[:-1]) + 1, tools)
    rendered = [renderer.render_message(message, ctx) for message, ctx in zip(messages, contexts, strict=True)]
    assert units == [unit for header, output, _ in rendered for unit in (header, output)]
    assert all(not overlap for _, _, overlap in rendered)


_CONTEXT_FREE = (
    "llama3",
    "qwen3",
    "qwen3_disable_thinking",
    "qwen3_instruct",
    "qwen3_vl",
    "qwen3_5",
    "qwen3_5_disable_thinking",
)


_CONTEXT_FREE_MORE = (  # not in _FAMILIES: built with the Qwen3 vocabulary, which spells their control tokens
    "qwen3_vl_instruct",
    "qwen3_5_preserve_thinking",
    "qwen3_8_disable_thinking",
    "qwen3_8_low_reasoning",
    "qwen3_8_medium_reasoning",
    "qwen3_8_xhigh_reasoning",
)


_TOOL_RESULT = Message(role="tool", content="42", tool_call_id="call_0")


def _declaring_classes() -> set[type[Renderer]]:
    """Every renderer class (built-in subclasses included) that declares context-free roles."""
    found: set[type[Renderer]] = set()
    pending: list[type[Renderer]] = [Renderer]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.context_free_roles:
            found.add(cls)
    return found


def test_every_context_free_declaration_is_tested() -> None:
    """A family that declares context_free_roles is in the property below (the declaration is never trusted)."""
    import tinkerflow.render.registry  # noqa: F401  (imports every built-in family)

    tested = {type(_get(name)) for name in _CONTEXT_FREE} | {
        type(get_renderer(name, cached_tokenizer("qwen3"))) for name in _CONTEXT_FREE_MORE
    }
    declaring = {cls for cls in _declaring_classes() if cls.__module__.startswith("tinkerflow.")}
    assert declaring <= tested, sorted(cls.__name__ for cls in declaring - tested)
    assert not type(get_renderer("nemotron3", cached_tokenizer("qwen3"))).context_free_roles


_NEIGHBOURS = st.sampled_from(
    [
        None,
        _TOOL_RESULT,
        Message(role="user", content="question"),
        Message(role="assistant", content="answer"),
        Message(role="system", content="be brief"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*_CONTEXT_FREE, *_CONTEXT_FREE_MORE]),
    st.sampled_from(["system", "user", "assistant", "tool"]),
    tft.texts(),
    st.integers(0, 4),
    st.lists(tft.tool_specs(), max_size=1).map(tuple),
    st.data(),
)
def test_context_free_roles_render_alike_in_any_position(
    name: str, role: Role, text: str, index: int, tools: tuple[Any, ...], data: st.DataObject
) -> None:
    """A plain message of a role in ``context_free_roles`` renders to the same pieces whatever ``is_last``,
    ``next_message`` and ``in_last_assistant_turn`` say, the rest of its context equal (what the generation-prompt
    check of packing relies on)."""
    renderer = get_renderer(name, cached_tokenizer("qwen3")) if name not in _FAMILIES else _get(name)
    assume(role in renderer.context_free_roles)
    message = Message(role=role, content=text, tool_call_id="call_0" if role == "tool" else None)
    try:
        renderer.validate((message,), tools)
    except TinkerflowError:
        assume(False)
    context = RenderContext(
        idx=index,
        is_last=data.draw(st.booleans()),
        prev_message=None if index == 0 else data.draw(_NEIGHBOURS),
        next_message=data.draw(_NEIGHBOURS),
        last_user_index=data.draw(st.integers(-1, index)),
        in_last_assistant_turn=data.draw(st.booleans()),
        tools=tools,
    )
    other = context._replace(
        is_last=data.draw(st.booleans()),
        next_message=data.draw(_NEIGHBOURS),
        in_last_assistant_turn=data.draw(st.booleans()),
    )
    assert renderer.render_message(message, other) == renderer.render_message(message, context)


# -- differential: the batch vs tinker-cookbook's conversation_to_datum ------------------------------------------


def _cookbook_datum(
    reference: Any, conversation: Conversation, mode: TrainOnWhat, max_length: int, reduction: str
) -> Any:
    from tests.conformance._cookbook import to_cookbook_messages
    from tinker_cookbook.exceptions import RendererError
    from tinker_cookbook.renderers import TrainOnWhat as CookbookTrainOnWhat
    from tinker_cookbook.supervised.data import conversation_to_datum

    try:
        return conversation_to_datum(
            to_cookbook_messages(reference, conversation),
            reference,
            max_length,
            train_on_what=CookbookTrainOnWhat(mode.value),
            reduction=reduction,  # type: ignore[arg-type]
        )
    except (RendererError, AssertionError, NotImplementedError, ValueError, IndexError):
        return None


def _assert_same_as_cookbook(
    renderer: Renderer,
    reference: Any,
    conversations: list[Conversation],
    mode: TrainOnWhat,
    max_length: int,
    reduction: str,
) -> None:
    references = [_cookbook_datum(reference, c, mode, max_length, reduction) for c in conversations]
    kept = [c for c, r in zip(conversations, references, strict=True) if r is not None]
    if len(kept) < len(conversations):  # the cookbook refuses some: tinkerflow refuses each of them too
        for conversation, theirs in zip(conversations, references, strict=True):
            if theirs is None:
                with pytest.raises(TinkerflowError):
                    conversation_datum(conversation, renderer=renderer, train_on=mode, max_length=max_length)
    datums = conversation_datums(
        kept,
        renderer=renderer,
        train_on=mode,
        max_length=max_length,
        reduction=reduction,
        batch_size=3,  # type: ignore[arg-type]
    )
    from tests.conformance._cookbook import layout

    for ours_datum, theirs in zip(datums, [r for r in references if r is not None], strict=True):
        ours = datum_to_tinker(ours_datum)
        assert layout(ours.model_input) == layout(theirs.model_input)
        for key in ("target_tokens", "weights"):
            np.testing.assert_array_equal(
                ours.loss_fn_inputs[key].to_numpy(),
                theirs.loss_fn_inputs[key].to_numpy().astype(ours.loss_fn_inputs[key].to_numpy().dtype),
            )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["llama3", "qwen3"]),
    st.lists(tft.conversations(tools=False, parts=False, max_messages=5), min_size=1, max_size=6),
    st.sampled_from([TrainOnWhat.ALL_ASSISTANT_MESSAGES, TrainOnWhat.LAST_ASSISTANT_MESSAGE]),
    st.integers(2, 96),
    st.sampled_from(["none", "mean"]),
)
def test_batch_matches_cookbook(
    name: str, conversations: list[Conversation], mode: TrainOnWhat, max_length: int, reduction: str
) -> None:
    pytest.importorskip("tinker_cookbook")
    allowed = _plain_text(name)
    assume(all(allowed(m.text()) for c in conversations for m in c.messages))
    _assert_same_as_cookbook(_get(name), _cookbook(name), conversations, mode, max_length, reduction)


@pytest.mark.conformance
def test_batch_matches_cookbook_every_family() -> None:
    """Every family the cookbook has, on the conformance suite's generated conversations, every train-on mode."""
    pytest.importorskip("tinker_cookbook")
    from tests.conformance._compare import families

    for family in families():
        _check_family(family.renderer(), family.cookbook(), family.profile, family.customized)


def _check_family(renderer: Renderer, reference: Any, profile: Any, customized: bool) -> None:
    from tests.conformance._strategies import conversations as family_conversations
    from tests.conformance._strategies import with_trainable

    modes = [mode for mode in TrainOnWhat if customized or mode is not TrainOnWhat.CUSTOMIZED]

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(family_conversations(profile), min_size=1, max_size=4),
        st.sampled_from(modes),
        st.lists(st.booleans(), min_size=1, max_size=4),
        st.integers(2, 160),
        st.sampled_from(["none", "mean"]),
    )
    def check(
        conversations: list[Conversation], mode: TrainOnWhat, flags: list[bool], max_length: int, reduction: str
    ) -> None:
        if mode is TrainOnWhat.CUSTOMIZED:
            conversations = [with_trainable(c, flags) for c in conversations]
        _assert_same_as_cookbook(renderer, reference, conversations, mode, max_length, reduction)

    check()
