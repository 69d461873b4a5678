"""The ``gguf`` export: the merged model as one GGUF file for llama.cpp / ollama. (Shell.)

The weights are those of the ``hf`` export (:func:`.merge.merged_state`: LoRA merged in fp32 tensor by tensor,
tied embeddings untied when the output layer was adapted), written with the ``gguf`` package's ``GGUFWriter``
into ``model.gguf`` following the conventions of llama.cpp's ``convert_hf_to_gguf.py``:

* **Architectures.** ``llama`` (``LlamaForCausalLM``: the tiny Llama, SmolLM2) and ``qwen3``; any other
  ``model_type`` (and rope scaling other than the default) is refused with a :class:`ConfigError` naming it.
* **Tensor names** from ``gguf.TensorNameMap`` (``token_embd.weight``, ``blk.N.attn_q.weight``, ...,
  ``output_norm.weight``, ``output.weight``). A tied model has no ``output.weight`` (llama.cpp then reads the
  embedding); an untied one (or one untied by the export) has it.
* **The q/k permutation (llama only).** Hugging Face's Llama rotates *halves* of each head (``rotate_half``);
  llama.cpp's ``llama`` architecture rotates *adjacent pairs*. The converter therefore reorders the rows of
  ``q_proj`` (with ``n_head``) and ``k_proj`` (with ``n_head_kv``): per head, the row ``i`` of the first half and
  the row ``i`` of the second half become rows ``2i`` and ``2i + 1``
  (``w.reshape(n, 2, d // n // 2, ...).swapaxes(1, 2).reshape(w.shape)``, :func:`permute_qk`;
  :func:`unpermute_qk` undoes it). Qwen3 uses llama.cpp's NeoX rope, which is HF's layout: no permutation.
* **Hyperparameters.** ``{arch}.context_length``, ``embedding_length``, ``block_count``, ``feed_forward_length``,
  ``attention.head_count``, ``attention.head_count_kv``, ``attention.key_length`` / ``value_length``,
  ``rope.dimension_count``, ``rope.freq_base``, ``attention.layer_norm_rms_epsilon``, ``vocab_size``,
  ``general.file_type`` and ``general.quantization_version``.
* **Tensor types** (:data:`GGUF_QUANTS`): ``f16`` (default), ``bf16`` and ``q8_0`` apply to 2-D weights; 1-D
  tensors (norms) stay ``f32``, as in llama.cpp. ``q8_0`` (``gguf.quants.quantize``: blocks of 32 values, one f16
  scale ``max|x| / 127`` and 32 int8s) needs rows that divide by 32; other rows fall back to ``f16`` as llama.cpp
  does. ``f32`` writes everything in fp32.
* **Tokenizer** (byte-level BPE only, ``tokenizer.ggml.model = "gpt2"``): tokens by id (ids with no token padded
  as ``[PAD<id>]``, type UNUSED, up to the embedding rows), token types (NORMAL, CONTROL for special tokens,
  USER_DEFINED for other added ones), merges, bos/eos/unk/pad ids, ``add_bos_token`` / ``add_eos_token``,
  ``add_space_prefix`` and ``tokenizer.chat_template`` when the tokenizer has one. The tiny models' byte
  tokenizer is written as its equivalent BPE (256 byte symbols, no merges). ``tokenizer.ggml.pre`` (llama.cpp's
  pre-tokenizer) is chosen by name (``smollm`` for SmolLM2, ``qwen2`` for Qwen3), else ``default``; llama.cpp's
  converter picks it from a hash of the tokenizer's output instead.

**Memory.** ``GGUFWriter`` needs every tensor's name, shape and type before the first tensor's data, but not the
data itself: the header and tensor infos are written from the shapes (:attr:`.stream.ExportBase.tensors`), then
each tensor is read, merged, converted and written, one at a time. The base model is streamed from its safetensors
files as for ``hf`` (:mod:`.stream`), so the export holds about one tensor (with its merge temporaries and its
encoded copy); a base that is not a safetensors folder (the tiny specs) is loaded whole first.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.checkpoint import CheckpointError
from tinkerflow.shell.export.merge import checkpoint_weights, merged_state
from tinkerflow.shell.export.sources import ExportSource
from tinkerflow.shell.export.stream import ExportBase, open_export_base

if TYPE_CHECKING:
    import gguf
    import torch

__all__ = ["GGUF_FILE", "GGUF_QUANTS", "GGUFExport", "gguf_architecture", "permute_qk", "unpermute_qk", "write_gguf"]

#: The tensor types a ``gguf`` export may be written in.
GGUF_QUANTS: Final = ("f16", "q8_0", "bf16", "f32")
#: The file written in the output folder.
GGUF_FILE: Final = "model.gguf"
_WHERE: Final = "export"
#: HF ``model_type`` -> (llama.cpp architecture name, whether q/k are permuted to llama.cpp's rope layout).
_ARCHITECTURES: Final[Mapping[str, tuple[str, bool]]] = {"llama": ("llama", True), "qwen3": ("qwen3", False)}


@attrs.frozen
class GGUFExport:
    """What :func:`write_gguf` wrote.

    Attributes:
        file: the file name (in the output folder).
        architecture: the llama.cpp architecture (``llama``, ``qwen3``).
        quant: the tensor type of the 2-D weights (:data:`GGUF_QUANTS`).
        tensors: the number of tensors written.
        total_bytes: their size in bytes.
        untied: whether tied embeddings were untied (an ``lm_head`` adapter on a tied model).
        chat_template: whether a chat template was written.
    """

    file: str
    architecture: str
    quant: str
    tensors: int
    total_bytes: int
    untied: bool
    chat_template: bool


def permute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half row order of a q/k projection (``heads`` heads) -> llama.cpp's adjacent-pairs order."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of :func:`permute_qk`."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_architecture(config: object) -> tuple[str, bool]:
    """The llama.cpp architecture of a transformers ``config`` and whether its q/k are permuted.

    Raises:
        ConfigError: the architecture or its rope scaling has no ``gguf`` export here.
    """
    model_type = str(getattr(config, "model_type", ""))
    if model_type not in _ARCHITECTURES:
        raise ConfigError(
            _WHERE,
            "format",
            f"the gguf export supports the architectures {', '.join(_ARCHITECTURES)}, not {model_type!r}.",
            "export it with format 'hf' and convert it with llama.cpp's convert_hf_to_gguf.py.",
        )
    rope_type = _rope(config)[1]
    if rope_type not in ("default", None):
        raise ConfigError(
            _WHERE,
            "format",
            f"the gguf export does not support {model_type!r} with rope scaling {rope_type!r}.",
            "export it with format 'hf' and convert it with llama.cpp's convert_hf_to_gguf.py.",
        )
    return _ARCHITECTURES[model_type]


def _rope(config: object) -> tuple[float, str | None]:
    """The rope base frequency and scaling type (transformers 5's ``rope_parameters`` or the older fields)."""
    params: Any = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    kind = params.get("rope_type", params.get("type"))
    return float(theta if theta is not None else 10000.0), kind


def _qtype(shape: Sequence[int], quant: str) -> Any:
    import gguf

    types = gguf.GGMLQuantizationType
    if quant == "f32" or len(shape) < 2:
        return types.F32
    if quant == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0] == 0:
        return types.Q8_0
    return types.BF16 if quant == "bf16" else types.F16


def _file_type(quant: str) -> int:
    import gguf

    kinds = gguf.LlamaFileType
    return int(
        {"f32": kinds.ALL_F32, "f16": kinds.MOSTLY_F16, "bf16": kinds.MOSTLY_BF16, "q8_0": kinds.MOSTLY_Q8_0}[quant]
    )


def _tensor_names(keys: Sequence[str], architecture: str, layers: int) -> dict[str, str]:
    import gguf

    arch = next(item for item, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    table = gguf.TensorNameMap(arch, layers)
    names: dict[str, str] = {}
    for key in keys:
        name = table.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(
                _WHERE, "format", f"the tensor {key!r} has no llama.cpp name in the {architecture} architecture."
            )
        names[key] = name
    return names


def _add_hyperparameters(writer: Any, config: Any, quant: str, name: str, vocab_size: int) -> None:
    import gguf

    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope(config)[0])
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _hf_tokenizer(base: ExportBase) -> Any:
    from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
    from tinkerflow.shell.backends.local.models import ByteTokenizer, byte_tokenizer_as_hf

    tokenizer = base.tokenizer
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf
    if isinstance(tokenizer, ByteTokenizer):
        return byte_tokenizer_as_hf(tokenizer)
    raise ConfigError(_WHERE, "format", f"{base.name!r} has no tokenizer to write.")  # pragma: no cover


def _pre_tokenizer(name: str, model_type: str) -> str:
    if "smollm" in name.lower():
        return "smollm"
    return "qwen2" if model_type == "qwen3" else "default"


def add_tokenizer(writer: gguf.GGUFWriter, hf: object, vocab_size: int, pre: str) -> bool:
    """Write the tokenizer of the ``transformers`` fast tokenizer ``hf`` (byte-level BPE) padded to
    ``vocab_size`` tokens; returns whether a chat template was written.

    Raises:
        ConfigError: the tokenizer is not a byte-level BPE (or has no fast form).
        CheckpointError: it has more tokens than the model has embedding rows.
    """
    import gguf

    backend = getattr(hf, "backend_tokenizer", None)
    data: Any = json.loads(backend.to_str()) if backend is not None else {}
    model, decoder = data.get("model") or {}, data.get("decoder") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(decoder):
        raise ConfigError(
            _WHERE,
            "format",
            "the gguf export writes byte-level BPE tokenizers (llama.cpp's 'gpt2' model) only; this one is "
            f"{model.get('type')!r} with decoder {decoder.get('type')!r}.",
            "export it with format 'hf' and convert it with llama.cpp's convert_hf_to_gguf.py.",
        )
    types = gguf.TokenType
    entries = {int(index): (token, types.NORMAL) for token, index in model["vocab"].items()}
    for added in data.get("added_tokens") or []:
        entries[int(added["id"])] = (added["content"], types.CONTROL if added["special"] else types.USER_DEFINED)
    if entries and max(entries) >= vocab_size:
        raise CheckpointError(f"the tokenizer has id {max(entries)}, the model only {vocab_size} embedding rows.")
    tokens = [entries.get(index, (f"[PAD{index}]", types.UNUSED)) for index in range(vocab_size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_add_space_prefix('"add_prefix_space": true' in json.dumps(data.get("pre_tokenizer") or {}))
    writer.add_token_list([token for token, _ in tokens])
    writer.add_token_types([int(kind) for _, kind in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []])
    _add_special_tokens(writer, hf)
    template: Any = getattr(hf, "chat_template", None)
    if isinstance(template, dict):
        template = [{"name": key, "template": value} for key, value in template.items()]
    if template:
        writer.add_chat_template(template)
    return bool(template)


def _add_special_tokens(writer: Any, hf: Any) -> None:
    for kind in ("bos", "eos", "unk", "pad"):
        index = getattr(hf, f"{kind}_token_id", None)
        if index is not None:
            getattr(writer, f"add_{kind}_token_id")(int(index))
    probe = list(hf("a", add_special_tokens=True)["input_ids"])
    bos, eos = hf.bos_token_id, hf.eos_token_id
    writer.add_add_bos_token(bool(probe) and bos is not None and probe[0] == bos)
    writer.add_add_eos_token(bool(probe) and eos is not None and probe[-1] == eos)


def _encode(tensor: torch.Tensor, qtype: Any) -> np.ndarray:
    import gguf

    array = tensor.detach().to("cpu").float().contiguous().numpy()
    encoded: np.ndarray = gguf.quants.quantize(array, qtype)
    return encoded


def _nbytes(shape: Sequence[int], qtype: Any) -> tuple[tuple[int, ...], int]:
    """The byte shape (the shape itself for f32/f16) and size of a tensor of ``shape`` stored as ``qtype``."""
    import gguf

    types = gguf.GGMLQuantizationType
    if qtype in (types.F32, types.F16):
        return tuple(shape), int(np.prod(shape)) * (4 if qtype == types.F32 else 2)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
    return tuple(byte_shape), int(np.prod(byte_shape))


def write_gguf(
    source: ExportSource, folder: pathlib.Path, quant: str = "f16", *, progress: bool = False, stream: bool = True
) -> GGUFExport:
    """Write the merged model of ``source`` as ``folder/model.gguf`` with 2-D weights in ``quant``.

    ``stream``: read the base model a tensor at a time when it is a safetensors folder (as :func:`.merge.write_hf`);
    ``False`` loads it whole.

    Raises:
        ConfigError: an unknown ``quant``, an architecture, rope scaling or tokenizer the export does not support.
        CheckpointError: the checkpoint does not fit its base model.
    """
    import gguf
    import torch

    if quant not in GGUF_QUANTS:
        raise ConfigError(_WHERE, "quant", f"unknown gguf type {quant!r}.", f"use one of {', '.join(GGUF_QUANTS)}.")
    base = open_export_base(source.meta.base_model, stream=stream)
    config: Any = base.config
    architecture, permute = gguf_architecture(config)
    weights = checkpoint_weights(source, lazy=stream)
    plan, untie = merged_state(base, source, weights)
    names = _tensor_names(list(plan), architecture, int(config.num_hidden_layers))
    writer = gguf.GGUFWriter(folder / GGUF_FILE, architecture)
    vocab_size = int(base.tensors["model.embed_tokens.weight"].shape[0])
    _add_hyperparameters(writer, config, quant, source.meta.base_model, vocab_size)
    pre = _pre_tokenizer(source.meta.base_model, str(config.model_type))
    chat = add_tokenizer(writer, _hf_tokenizer(base), vocab_size, pre)
    qtypes = {key: _qtype(tuple(base.tensors[key].shape), quant) for key in plan}
    total = 0
    for key in plan:
        shape, size = _nbytes(tuple(base.tensors[key].shape), qtypes[key])
        plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
        dtype = np.dtype(plain.get(qtypes[key], np.uint8))
        raw = None if qtypes[key] in plain else qtypes[key]
        writer.add_tensor_info(names[key], shape, dtype, size, raw_dtype=raw)
        total += size
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    heads = {"attn_q": int(config.num_attention_heads)}
    heads["attn_k"] = int(getattr(config, "num_key_value_heads", None) or heads["attn_q"])
    with _progress(len(plan), progress) as bar:
        for key in plan:
            tensor = plan[key]()
            kind = names[key].split(".")[-2]
            if permute and kind in heads:
                tensor = torch.from_numpy(permute_qk(tensor.float().numpy(), heads[kind]))
            writer.write_tensor_data(_encode(tensor, qtypes[key]))
            bar.update(1)
    writer.close()
    return GGUFExport(GGUF_FILE, architecture, quant, len(plan), total, untie, chat)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="export", unit="tensor", file=sys.stderr, disable=not enabled, leave=False)
