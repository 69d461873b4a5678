"""Model names, tokenizers, local:// paths and atomic checkpoint directories (no model is trained here)."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.shell.backends.local.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    LocalPath,
    atomic_directory,
    read_meta,
    write_meta,
)
from tinkerflow.shell.backends.local.embedded import EMBEDDED_SHA256, cache_root, embedded_gguf
from tinkerflow.shell.backends.local.models import ByteTokenizer, TinyModelSpec
from tinkerflow.tokenizers import Tokenizer, TokenizerError

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(st.text())
def test_byte_tokenizer_round_trips_text(text: str) -> None:
    tokenizer = ByteTokenizer(300)
    tokens = tokenizer.encode(text)
    assert all(0 <= token < 256 for token in tokens)
    assert tokenizer.decode(tokens) == text
    assert tokenizer.encode_batch([text, text]) == [tokens, tokens]


def test_byte_tokenizer_special_ids() -> None:
    tokenizer = ByteTokenizer(300)
    assert tokenizer.decode([104, 105, 257, 260]) == "hi<|eos|><|extra_1|>"
    assert (tokenizer.eos_token_id, tokenizer.vocab_size) == (257, 300)
    assert tokenizer.bos_token_id == ByteTokenizer.BOS  # BOS is written by id: encode never adds it
    assert tokenizer.encode("<|eos|>") == list(b"<|eos|>")  # control-token spellings stay plain text
    assert (tokenizer.token_id("<|eos|>"), tokenizer.token_id("<|extra_1|>"), tokenizer.token_id("a")) == (257, 260, 97)
    assert tokenizer.added_tokens["<|pad|>"] == 258
    assert len(tokenizer.added_tokens) == 300 - 256
    assert isinstance(tokenizer, Tokenizer)
    with pytest.raises(TokenizerError):
        tokenizer.token_id("ab")
    with pytest.raises(ConfigError):
        ByteTokenizer(100)


def test_tiny_model_names() -> None:
    assert TinyModelSpec.parse("tiny-llama") == TinyModelSpec(family="llama")
    spec = TinyModelSpec.parse("tiny-qwen3:hidden=48,layers=3,heads=6,kv_heads=3,vocab=400,tie=true")
    assert spec == TinyModelSpec(family="qwen3", hidden=48, layers=3, heads=6, kv_heads=3, vocab=400, tie=True)
    assert TinyModelSpec.parse("Qwen/Qwen3-8B") is None
    for bad in (
        "tiny-llama:hidden",
        "tiny-llama:colour=3",
        "tiny-llama:hidden=x",
        "tiny-llama:vocab=100",
        "tiny-llama:hidden=30",
    ):
        with pytest.raises(ConfigError):
            TinyModelSpec.parse(bad)


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("TINKERFLOW_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("TINKERFLOW_CACHE")
    assert cache_root() == pathlib.Path.home() / ".cache" / "tinkerflow"


def test_embedded_gguf_is_the_pinned_file() -> None:
    import hashlib

    path = embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == EMBEDDED_SHA256


@given(names, st.sampled_from(["weights", "sampler_weights"]), names)
def test_local_paths_round_trip(run_id: str, kind: str, name: str) -> None:
    path = LocalPath(run_id=run_id, kind=kind, name=name)  # type: ignore[arg-type]
    assert str(path) == f"local://{run_id}/{kind}/{name}"
    assert LocalPath.parse(str(path)) == path
    assert path.directory("/root") == pathlib.Path("/root") / run_id / kind / name


@pytest.mark.parametrize(
    "bad",
    [
        "tinker://r/weights/x",
        "local://r/weights",
        "local://r/other/x",
        "local://r/weights/../x",
        "local://r/weights/a/b",
        3,
    ],
)
def test_bad_local_paths(bad: object) -> None:
    with pytest.raises(ValidationError):
        LocalPath.parse(bad)  # type: ignore[arg-type]


def _meta() -> CheckpointMeta:
    return CheckpointMeta(
        base_model="tiny-llama",
        kind="weights",
        lora_rank=4,
        lora_alpha=32,
        target_modules=("q_proj",),
        has_optimizer=True,
        optimizer_steps=3,
        seed=0,
    )


def test_atomic_directory_publishes_whole_or_nothing(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "run" / "weights" / "a"

    def killed_mid_write() -> None:
        with atomic_directory(target) as temp:
            (temp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary directory is gone too
    with atomic_directory(target) as temp:
        write_meta(temp, _meta())
        (temp / "data.bin").write_bytes(b"payload")
        assert not target.exists()  # nothing is visible until the block ends
    assert read_meta(target, "local://run/weights/a") == _meta()
    with pytest.raises(ConfigError, match="already exists"), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as temp:
        write_meta(temp, _meta())
    assert sorted(p.name for p in target.iterdir()) == ["checkpoint.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a"]


def test_checkpoint_meta_errors(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_meta(tmp_path, "local://r/weights/x")
    (tmp_path / "checkpoint.json").write_text('{"format": 99}')
    with pytest.raises(CheckpointError):
        read_meta(tmp_path, "local://r/weights/x")
    (tmp_path / "checkpoint.json").write_text(_meta().to_json().replace('"format": 1', '"format": 2'))
    with pytest.raises(CheckpointError, match="format 2"):
        read_meta(tmp_path, "local://r/weights/x")


def test_concurrent_model_construction_leaves_torch_initialization_intact() -> None:
    """transformers' ``no_init_weights`` swaps torch's init functions process-wide; two threads inside it at once
    used to leave the no-ops installed for good, so every later random model held uninitialized memory (NaN
    weights, seen under the server's worker threads). Construction is serialized by MODEL_CONSTRUCTION_LOCK."""
    import threading

    import torch

    from tinkerflow.shell.backends.local.models import load_base_model

    originals = {name: getattr(torch.nn.init, name) for name in ("normal_", "uniform_", "zeros_", "kaiming_uniform_")}
    cpu = torch.device("cpu")
    base = load_base_model("tiny-llama:hidden=32,layers=1,heads=2,kv_heads=1,intermediate=32", cpu)
    reference = {key: value.clone() for key, value in base.state.items()}
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def build_many() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(15):
                base.build()
        except BaseException as error:  # collected and re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=build_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert {name: getattr(torch.nn.init, name) for name in originals} == originals
    again = load_base_model("tiny-llama:hidden=32,layers=1,heads=2,kv_heads=1,intermediate=32", cpu)
    for key, value in reference.items():
        torch.testing.assert_close(again.state[key], value, rtol=0, atol=0)
