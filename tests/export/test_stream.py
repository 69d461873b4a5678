"""The streamed export: a base model that is a folder of safetensors shards is read one tensor at a time.

A tiny Llama (untied, tied, and untied stored in bfloat16) is saved with ``save_pretrained(max_shard_size=...)``
into several safetensors shards, and a LoRA run (``lm_head`` included) is trained on that folder with the local
backend. Its ``hf`` export through the streaming path equals the whole-load path's bit for bit (every tensor, the
config, the index, the tokenizer; fp32 and bf16), gives the local sampler's next-token distributions, and its
``gguf`` files (f16, q8_0) are byte-identical to the whole-load path's. The memory property is counted, not timed:
every tensor the reader returns is tracked with a weakref, and the base bytes alive at once stay within one output
shard plus one tensor (``gguf``: two tensors) while ``load_base_model`` is made to fail, so the old path (the whole
base in memory) cannot pass. A full fine-tune's checkpoint streams too; bases that do not map plainly onto their
files fall back to the whole load.
"""

from __future__ import annotations

import json
import pathlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import numpy as np
import pytest

from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams
from tinkerflow.errors import ConfigError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from safetensors import safe_open  # noqa: E402  (after the importorskips)
from safetensors.torch import load_file, save_file  # noqa: E402

from tinkerflow.shell.backends.local import LocalBackend  # noqa: E402
from tinkerflow.shell.backends.local import models as models_module  # noqa: E402
from tinkerflow.shell.backends.local.models import ByteTokenizer, byte_tokenizer_as_hf, load_base_model  # noqa: E402
from tinkerflow.shell.export import export_checkpoint  # noqa: E402
from tinkerflow.shell.export import merge as merge_module  # noqa: E402
from tinkerflow.shell.export import stream as stream_module  # noqa: E402
from tinkerflow.shell.export.gguf_export import GGUF_FILE, write_gguf  # noqa: E402
from tinkerflow.shell.export.merge import write_hf  # noqa: E402
from tinkerflow.shell.export.sources import ExportSource, resolve_source  # noqa: E402
from tinkerflow.shell.export.stream import base_folder, open_export_base  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 300
# embed_tokens is the largest tensor (300 x 32 fp32 = 37.5 KiB); the whole model is about 8 times that
_DIMS = f"hidden=32,layers=4,heads=4,kv_heads=2,intermediate=128,vocab={VOCAB},context=64"
VARIANTS = {"untied": (_DIMS, "float32"), "tied": (f"{_DIMS},tie=true", "float32"), "bf16": (_DIMS, "bfloat16")}
SHARD = 16 * 1024  # the export's shard size in these tests (bytes)
TOLERANCE = 1e-4


def save_base(folder: pathlib.Path, spec: str, dtype: str = "float32", shard: str = "20KB") -> pathlib.Path:
    """The tiny model ``spec`` saved as a Hugging Face folder (weights in several safetensors shards, in ``dtype``)
    with its byte tokenizer."""
    model = load_base_model(f"tiny-llama:{spec}", torch.device("cpu"), torch.float32).build()
    model.to(getattr(torch, dtype)).save_pretrained(folder, max_shard_size=shard)
    byte_tokenizer_as_hf(ByteTokenizer(VOCAB, "byte")).save_pretrained(str(folder))
    return folder


@attrs.frozen
class Trained:
    """A LoRA run on a base folder, its sampler checkpoint and the local sampler's answers on a few prompts."""

    base: pathlib.Path
    source: ExportSource
    prompts: tuple[np.ndarray, ...]
    expected: tuple[np.ndarray, ...]  # full log-softmax [T - 1, V] of the local sampler per prompt


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"), device="cpu") as local:
        yield local


def _datum(tokens: np.ndarray) -> Datum:
    return Datum(
        model_input=ModelInput.from_tokens(tokens[:-1]),
        target_tokens_T=tokens[1:],
        weights_T=np.ones(tokens.size - 1, np.float32),
    )


def _train(client: Any, seed: int, steps: int = 3) -> None:
    rng = np.random.default_rng(seed)
    data = [_datum(rng.integers(0, 256, int(length))) for length in rng.integers(12, 30, 3)]
    for _ in range(steps):
        client.forward_backward(data, "cross_entropy").result()
        client.optim_step(AdamParams(learning_rate=2e-2)).result()


def _sampler_distributions(backend: LocalBackend, path: str, prompts: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The local sampler's full next-token log-softmax at every prompt position (top-k over the whole vocabulary)."""
    sampler = backend.create_sampling_client(model_path=path).result()
    params = SamplingParams(max_tokens=1, temperature=0.0)
    out = []
    for tokens in prompts:
        response = sampler.sample(
            ModelInput.from_tokens(tokens), 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=VOCAB
        ).result()
        ids, values = response.topk_prompt_token_ids_T_K, response.topk_prompt_logprobs_T_K
        assert ids is not None
        assert values is not None
        full = np.empty((tokens.size, VOCAB), np.float32)
        np.put_along_axis(full, ids, values, axis=1)
        out.append(full[1:])
    return tuple(out)


@pytest.fixture(scope="module")
def runs(backend: LocalBackend, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """Trained runs by key of VARIANTS, made on first use and shared by the module."""
    return {}


def _run(runs: dict[str, Trained], backend: LocalBackend, key: str, root: pathlib.Path) -> Trained:
    if key not in runs:
        spec, dtype = VARIANTS[key]
        base = save_base(root / f"base-{key}", spec, dtype)
        assert len(list(base.glob("model-*.safetensors"))) > 3  # several shards
        client = backend.create_lora_training_client(str(base), rank=4, seed=1, train_unembed=True).result()
        _train(client, seed=2)
        path = client.save_weights_for_sampler(f"stream-{key}").result()
        rng = np.random.default_rng(3)
        prompts = tuple(rng.integers(0, VOCAB, int(length)) for length in rng.integers(2, 30, 8))
        source = resolve_source(path, checkpoint_dir=backend.checkpoint_dir)
        runs[key] = Trained(base, source, prompts, _sampler_distributions(backend, path, prompts))
    return runs[key]


@pytest.fixture(params=list(VARIANTS))
def trained(
    request: pytest.FixtureRequest,
    runs: dict[str, Trained],
    backend: LocalBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Trained:
    return _run(runs, backend, request.param, tmp_path_factory.mktemp("bases"))


@pytest.fixture
def tied(runs: dict[str, Trained], backend: LocalBackend, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return _run(runs, backend, "tied", tmp_path_factory.mktemp("bases"))


def _tensors(folder: pathlib.Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return out


def _export(source: ExportSource, out: pathlib.Path, dtype: Any, *, stream: bool) -> pathlib.Path:
    out.mkdir()
    write_hf(source, out, dtype, stream=stream)
    return out


def _distributions(folder: pathlib.Path, prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
    import warnings

    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [
            torch.log_softmax(model(input_ids=torch.as_tensor(tokens)[None]).logits[0, :-1].float(), -1).numpy()
            for tokens in prompts
        ]


# ---- equal to the whole-load path and to the sampler ---------------------------------------------------------


def test_streamed_hf_equals_the_whole_load_bit_for_bit(
    trained: Trained, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = open_export_base(str(trained.base))
    assert base.streamed
    assert all(tensor.is_meta for tensor in base.tensors.values())  # nothing read up front
    monkeypatch.setattr(merge_module, "SHARD_BYTES", SHARD)
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        streamed = _export(trained.source, tmp_path / f"stream-{name}", dtype, stream=True)
        whole = _export(trained.source, tmp_path / f"whole-{name}", dtype, stream=False)
        assert len(list(streamed.glob("model-*.safetensors"))) > 3
        for file in ("config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"):
            assert (streamed / file).read_text() == (whole / file).read_text(), file
        got, want = _tensors(streamed), _tensors(whole)
        assert got.keys() == want.keys()  # (and the same shards: the index files are equal)
        for key, value in want.items():
            assert got[key].dtype == value.dtype == dtype, key
            assert torch.equal(got[key], value), key
    assert json.loads((streamed / "config.json").read_text())["tie_word_embeddings"] is False  # lm_head adapted
    assert "lm_head.weight" in got


def test_streamed_hf_equals_the_local_sampler(trained: Trained, tmp_path: pathlib.Path) -> None:
    result = export_checkpoint(trained.source.directory, tmp_path / "hf", "hf")
    got = _distributions(result.out, trained.prompts)
    diff = max(float(np.abs(g - e).max()) for g, e in zip(got, trained.expected, strict=True))
    print(f"\n{trained.base.name}: streamed hf export vs local sampler {diff:.3g}")
    assert diff <= TOLERANCE
    base = _distributions(trained.base, trained.prompts)
    moved = max(float(np.abs(b - g).max()) for b, g in zip(base, got, strict=True))
    assert moved > 100 * TOLERANCE  # training changed the model, so the equality above is not vacuous


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_streamed_gguf_is_the_whole_load_file(tied: Trained, tmp_path: pathlib.Path, quant: str) -> None:
    files = []
    for stream in (True, False):
        folder = tmp_path / f"stream-{stream}"
        folder.mkdir()
        written = write_gguf(tied.source, folder, quant, stream=stream)
        assert written.untied
        files.append((folder / GGUF_FILE).read_bytes())
    assert files[0] == files[1]


# ---- memory: one shard and one tensor ------------------------------------------------------------------------


@attrs.define
class ReadCounter:
    """Wraps ``read_tensor``: counts the bytes of the tensors it returned that are still alive (weakrefs)."""

    read: Callable[[pathlib.Path, str], Any]
    alive: int = 0
    peak: int = 0
    reads: list[str] = attrs.Factory(list)
    largest: int = 0

    def __call__(self, file: pathlib.Path, key: str) -> Any:
        tensor = self.read(file, key)
        size = tensor.numel() * tensor.element_size()
        self.reads.append(key)
        self.largest = max(self.largest, size)
        self.alive += size
        self.peak = max(self.peak, self.alive)
        weakref.finalize(tensor, self._release, size)
        return tensor

    def _release(self, size: int) -> None:
        self.alive -= size


def _no_whole_load(*args: object, **kwargs: object) -> object:
    raise AssertionError("the base model was loaded whole")


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
    counting = ReadCounter(stream_module.read_tensor)
    monkeypatch.setattr(stream_module, "read_tensor", counting)
    monkeypatch.setattr(models_module, "load_base_model", _no_whole_load)
    monkeypatch.setattr(merge_module, "SHARD_BYTES", SHARD)
    return counting


def _file_bytes(folder: pathlib.Path) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in _tensors(folder).values())


def test_hf_holds_one_shard_and_one_tensor(tied: Trained, counter: ReadCounter, tmp_path: pathlib.Path) -> None:
    result = export_checkpoint(tied.source.directory, tmp_path / "hf", "hf")
    assert result.untied
    model_bytes = _file_bytes(tied.base)
    assert len(counter.reads) == len(_tensors(result.out))  # each output tensor read once, from the files
    assert set(counter.reads) == set(_tensors(tied.base))  # (the untied lm_head from the stored embedding)
    bound = SHARD + counter.largest
    print(f"\nhf: base tensors alive at most {counter.peak} B (bound {bound} B), base model {model_bytes} B")
    assert counter.peak <= bound
    assert model_bytes > 4 * bound  # holding the whole base could not pass
    assert counter.alive == 0  # everything read was released


def test_gguf_holds_two_tensors(tied: Trained, counter: ReadCounter, tmp_path: pathlib.Path) -> None:
    export_checkpoint(tied.source.directory, tmp_path / "gguf", "gguf", quant="q8_0")
    assert len(counter.reads) == len(_tensors(tied.base)) + 1  # the tied embedding is read for both outputs
    print(f"\ngguf: base tensors alive at most {counter.peak} B, the largest {counter.largest} B")
    assert counter.peak <= 2 * counter.largest  # the tensor being written and the next one being read
    assert counter.alive == 0


def test_full_finetune_streams_its_checkpoint(
    backend: LocalBackend, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = save_base(tmp_path / "base", VARIANTS["tied"][0])
    client = backend.create_full_training_client(str(base), seed=4).result()
    _train(client, seed=5, steps=2)
    source = resolve_source(client.save_weights_for_sampler("full").result(), checkpoint_dir=backend.checkpoint_dir)
    monkeypatch.setattr(merge_module, "SHARD_BYTES", SHARD)
    whole = _export(source, tmp_path / "whole", torch.float32, stream=False)
    counting = ReadCounter(stream_module.read_tensor)
    monkeypatch.setattr(stream_module, "read_tensor", counting)
    monkeypatch.setattr(models_module, "load_base_model", _no_whole_load)
    streamed = _export(source, tmp_path / "stream", torch.float32, stream=True)
    assert (streamed / "model.safetensors.index.json").read_text() == (
        whole / "model.safetensors.index.json"
    ).read_text()
    got, want = _tensors(streamed), _tensors(whole)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[key], value) for key, value in want.items())
    assert not torch.equal(got["model.embed_tokens.weight"], _tensors(base)["model.embed_tokens.weight"])  # trained
    assert counting.peak <= SHARD + counting.largest
    assert _file_bytes(whole) > 4 * (SHARD + counting.largest)


# ---- which bases stream --------------------------------------------------------------------------------------


def test_bases_that_do_not_map_plainly_are_loaded_whole(tmp_path: pathlib.Path) -> None:
    spec = VARIANTS["tied"][0]
    assert not open_export_base(f"tiny-llama:{spec}").streamed  # built from a config and a seed
    assert base_folder(f"tiny-llama:{spec}") is None
    both = save_base(tmp_path / "both", spec, shard="10MB")
    state = load_file(both / "model.safetensors")
    assert "lm_head.weight" not in state  # save_pretrained writes a tied pair once
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()  # both halves stored: transformers decides
    save_file(state, both / "model.safetensors", metadata={"format": "pt"})
    assert not open_export_base(str(both)).streamed
    missing = save_base(tmp_path / "missing", VARIANTS["untied"][0], shard="10MB")
    state = load_file(missing / "model.safetensors")
    del state["lm_head.weight"]  # an untied model without its output layer
    save_file(state, missing / "model.safetensors", metadata={"format": "pt"})
    assert not open_export_base(str(missing)).streamed
    adapter = save_base(tmp_path / "adapter", spec, shard="10MB")
    (adapter / "adapter_config.json").write_text("{}")  # from_pretrained treats it as a PEFT adapter: so does export
    with pytest.raises(ConfigError, match="cannot load"):
        open_export_base(str(adapter))
    assert open_export_base(str(save_base(tmp_path / "plain", spec))).streamed


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_a_checkpoint_of_the_bare_model_streams(variant: str, tmp_path: pathlib.Path) -> None:
    """Files of the bare ``LlamaModel`` (no ``model.`` prefix), which ``from_pretrained`` loads into the causal LM."""
    folder = save_base(tmp_path / "bare", VARIANTS[variant][0], shard="10MB")
    state = load_file(folder / "model.safetensors")
    save_file({key.removeprefix("model."): value for key, value in state.items()}, folder / "model.safetensors")
    streamed, whole = open_export_base(str(folder)), open_export_base(str(folder), stream=False)
    assert streamed.streamed
    assert not whole.streamed
    assert list(streamed.tensors) == list(whole.tensors)
    assert streamed.groups == whole.groups
    for key in whole.tensors:
        assert torch.equal(streamed.read(key), whole.read(key)), key


def test_a_hub_name_streams_from_the_hub_cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    revision = "0" * 40
    repo = tmp_path / "models--someone--tiny"
    save_base(repo / "snapshots" / revision, VARIANTS["tied"][0])
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert base_folder("someone/tiny") == repo / "snapshots" / revision
    assert base_folder("someone/absent") is None
    base = open_export_base("someone/tiny")
    assert base.streamed
    assert base.groups == (("model.embed_tokens.weight", "lm_head.weight"),)


@pytest.mark.slow
def test_embedded_smollm2_streams_bit_for_bit(tmp_path: pathlib.Path) -> None:
    """The embedded SmolLM2-135M-Instruct (one fp32 safetensors file, tied): the streamed hf export equals the
    whole-load one tensor for tensor."""
    with LocalBackend(checkpoint_dir=tmp_path / "checkpoints", device="cpu") as local:
        client = local.create_lora_training_client("SmolLM2-135M-Instruct", rank=4, seed=0).result()
        _train(client, seed=6, steps=1)
        source = resolve_source(client.save_weights_for_sampler("smol").result(), checkpoint_dir=local.checkpoint_dir)
    assert open_export_base(source.meta.base_model).streamed
    streamed = _export(source, tmp_path / "stream", torch.float32, stream=True)
    whole = _export(source, tmp_path / "whole", torch.float32, stream=False)
    assert (streamed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    assert (streamed / "config.json").read_text() == (whole / "config.json").read_text()
