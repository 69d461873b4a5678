"""The ``hf`` export: LoRA merged into the base weights, written as a Hugging Face model folder. (Shell.)

Each output tensor is ``W + (alpha / r) * B @ A`` computed in fp32 (the same expression, in the same order, as the
local sampler's merge), then cast to the chosen dtype; a full fine-tune's tensors are taken as saved. The folder
holds what plain ``transformers`` needs and nothing of tinkerflow: ``config.json``, ``model.safetensors`` (or
``model-0000i-of-0000n.safetensors`` shards with ``model.safetensors.index.json`` above :data:`SHARD_BYTES`),
``generation_config.json`` when the base model has one, and the tokenizer files (with the chat template when the
tokenizer has one; the tiny test models' byte tokenizer is written as an equivalent ``tokenizers`` BPE).

**Tied embeddings.** When the base ties its output layer to its input embeddings (``tie_word_embeddings``) and
LoRA adapted the output layer (``lm_head``), the adapted output layer is no longer the input embedding: the local
engine keeps the embedding as it was and adds the adapter only to the output. Merging into the shared tensor would
silently change the input embeddings too. So the export *unties*: it writes the unchanged embedding and a separate
``lm_head.weight``, and sets ``tie_word_embeddings`` to false. Without an ``lm_head`` adapter (or for a full
fine-tune, which trains the shared tensor as one) the model stays tied and only the embedding is written.

**Memory.** The base model is read through :func:`.stream.open_export_base`: when it is a folder of safetensors files
(the embedded SmolLM2, a local Hugging Face folder, a name in the hub cache) each base tensor is read from its file
when its output tensor is computed and dropped once merged, so an export holds about one output shard (the tensors
waiting to be written, at most :data:`SHARD_BYTES`) plus the tensor being merged, never the whole model; a full
fine-tune's checkpoint is read the same way (:class:`.stream.LazyTensors`). Other bases (the tiny specs, which are
built from a config and a seed) are loaded whole (fp32, CPU), and the export holds that model plus one shard.
"""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import attrs

from tinkerflow.shell.backends.local.checkpoint import FULL_FILE, CheckpointError, read_weights
from tinkerflow.shell.backends.local.embedded import EMBEDDED_NAMES, embedded_model_dir, quiet_transformers
from tinkerflow.shell.backends.local.models import ByteTokenizer, TinyModelSpec
from tinkerflow.shell.export.sources import ExportSource
from tinkerflow.shell.export.stream import ExportBase, LazyTensors, open_export_base, tied_groups

if TYPE_CHECKING:
    import torch

    from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer

__all__ = ["SHARD_BYTES", "HFExport", "Thunk", "checkpoint_weights", "merged_state", "tied_groups", "write_hf"]

#: An output tensor, computed when called (so only one merged tensor is alive at a time).
Thunk: TypeAlias = "Callable[[], torch.Tensor]"

#: The largest safetensors shard written (bytes of tensor data), as ``save_pretrained``'s default.
SHARD_BYTES: Final = 5 * 1024**3
_SINGLE_FILE: Final = "model.safetensors"
_INDEX_FILE: Final = "model.safetensors.index.json"


@attrs.frozen
class HFExport:
    """What :func:`write_hf` wrote.

    Attributes:
        tensors: the number of tensors written.
        total_bytes: their size in bytes.
        files: the weight files, in order.
        untied: whether tied embeddings were untied (an ``lm_head`` adapter on a tied model).
        tokenizer: whether tokenizer files were written.
        generation_config: whether ``generation_config.json`` was written.
    """

    tensors: int
    total_bytes: int
    files: tuple[str, ...]
    untied: bool
    tokenizer: bool
    generation_config: bool


def _adapted(key: str, weights: Mapping[str, torch.Tensor]) -> bool:
    return key.endswith(".weight") and f"{key.removesuffix('.weight')}.lora_A.weight" in weights


def merged_state(
    base: ExportBase, source: ExportSource, weights: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Thunk], bool]:
    """A plan of the output: ``key -> thunk`` giving each output tensor in fp32 (or its own dtype when not a
    float), and whether tied embeddings are untied. Tensors are computed (and base tensors read) when the thunk is
    called, one at a time."""
    groups = base.groups
    lora = source.meta.lora_rank is not None
    untie = lora and any(_adapted(key, weights) for group in groups for key in group)
    dropped = set() if untie else {key for group in groups for key in group[1:]}
    if lora:
        _check_adapters(base.tensors, weights, source)
        scale = source.meta.lora_alpha / cast("int", source.meta.lora_rank)
        plan = {key: _lora_thunk(base, key, weights, scale) for key in base.tensors if key not in dropped}
        return plan, untie
    group_of = {key: group for group in groups for key in group}
    unknown = sorted(set(weights) - set(base.tensors))
    if unknown:
        raise CheckpointError(f"{source.label}: weights {unknown[:3]} are not in {source.meta.base_model!r}.")
    plan = {}
    for key in base.tensors:
        if key in dropped:
            continue
        saved = next((other for other in group_of.get(key, (key,)) if other in weights), None)
        plan[key] = _full_thunk(weights, saved) if saved is not None else _base_thunk(base, key)
    return plan, False


def _check_adapters(
    base_state: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], source: ExportSource
) -> None:
    modules = {key.rsplit(".lora_", 1)[0] for key in weights}
    stray = sorted(module for module in modules if f"{module}.weight" not in base_state)
    incomplete = sorted(
        module
        for module in modules
        if f"{module}.lora_A.weight" not in weights or f"{module}.lora_B.weight" not in weights
    )
    if stray or incomplete or not modules:
        raise CheckpointError(
            f"{source.label}: its adapters do not fit {source.meta.base_model!r} "
            f"(no base weight for {stray[:3]}, A or B missing for {incomplete[:3]}, {len(modules)} modules)."
        )


def _lora_thunk(base: ExportBase, key: str, weights: Mapping[str, torch.Tensor], scale: float) -> Thunk:
    def thunk() -> torch.Tensor:
        weight = base.read(key)
        if not _adapted(key, weights):
            return weight.float() if weight.is_floating_point() else weight
        module = key.removesuffix(".weight")
        a = weights[f"{module}.lora_A.weight"].float()
        b = weights[f"{module}.lora_B.weight"].float()
        return weight.float() + scale * (b @ a)  # as lora.merge_adapters computes it

    return thunk


def _full_thunk(weights: Mapping[str, torch.Tensor], key: str) -> Thunk:
    return lambda: weights[key]


def _base_thunk(base: ExportBase, key: str) -> Thunk:
    return lambda: base.read(key)


def _shards(sizes: Sequence[tuple[str, int]], limit: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most ``limit`` bytes (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes:
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="export", unit="tensor", file=sys.stderr, disable=not enabled, leave=False)


def _write_weights(
    plan: Mapping[str, Thunk],
    folder: pathlib.Path,
    dtype: torch.dtype,
    shape_of: Mapping[str, torch.Tensor],
    progress: bool,
) -> tuple[tuple[str, ...], int]:
    """Compute and write the planned tensors shard by shard; returns the files and the total size."""
    from safetensors.torch import save_file

    def size(key: str) -> int:
        base = shape_of[key]
        item = dtype.itemsize if base.is_floating_point() else base.element_size()
        return base.numel() * item

    shards = _shards([(key, size(key)) for key in plan], SHARD_BYTES)
    names = (
        [_SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{index:05d}-of-{len(shards):05d}.safetensors" for index in range(1, len(shards) + 1)]
    )
    weight_map: dict[str, str] = {}
    total = 0
    with _progress(len(plan), progress) as bar:
        for keys, name in zip(shards, names, strict=True):
            tensors: dict[str, torch.Tensor] = {}
            seen: set[int] = set()
            for key in keys:
                tensor = plan[key]()
                tensor = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
                if tensor.untyped_storage().data_ptr() in seen:  # safetensors refuses two names over one storage
                    tensor = tensor.clone()
                seen.add(tensor.untyped_storage().data_ptr())
                tensors[key] = tensor
                total += tensors[key].numel() * tensors[key].element_size()
                weight_map[key] = name
                bar.update(1)
            save_file(tensors, str(folder / name), metadata={"format": "pt"})
            del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / _INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return tuple(names), total


def _write_config(config: object, folder: pathlib.Path, dtype: torch.dtype, untie: bool) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out: Any = copy.deepcopy(config)
    if untie:
        out.tie_word_embeddings = False
    out.dtype = dtype
    if not getattr(out, "architectures", None):
        out.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[out.model_type]]
    out.save_pretrained(str(folder))


def _source_folder(name: str) -> pathlib.Path | None:
    """The folder the base model was loaded from, when it was loaded from one."""
    if name in EMBEDDED_NAMES:
        return embedded_model_dir()
    folder = pathlib.Path(name).expanduser()
    return folder if folder.is_dir() else None


def _write_generation_config(name: str, folder: pathlib.Path) -> bool:
    """Copy the base model's ``generation_config.json`` (a folder's, or a hub name's from the local cache)."""
    if TinyModelSpec.parse(name) is not None:
        return False
    source = _source_folder(name)
    if source is not None:
        file = source / "generation_config.json"
        if file.is_file():
            shutil.copyfile(file, folder / file.name)
            return True
        return False
    from transformers import GenerationConfig

    try:
        with quiet_transformers():
            generation: Any = GenerationConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    generation.save_pretrained(str(folder))
    return True


def _write_tokenizer(tokenizer: HFTokenizer | ByteTokenizer, folder: pathlib.Path) -> bool:
    """The base model's tokenizer files (with its chat template); the byte tokenizer as an equivalent BPE."""
    from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
    from tinkerflow.shell.backends.local.models import byte_tokenizer_as_hf

    hf: Any
    if isinstance(tokenizer, HFTokenizer):
        hf = tokenizer.hf
    elif isinstance(tokenizer, ByteTokenizer):
        hf = byte_tokenizer_as_hf(tokenizer)
    else:  # pragma: no cover - a base model has one of the two
        return False
    with quiet_transformers():
        hf.save_pretrained(str(folder))
    return True


def checkpoint_weights(source: ExportSource, *, lazy: bool) -> Mapping[str, torch.Tensor]:
    """The checkpoint's trainable weights: the adapter (small) read whole; a full fine-tune's whole model read a
    tensor at a time when ``lazy`` (:class:`.stream.LazyTensors`), else whole."""
    import torch

    if lazy and source.meta.lora_rank is None:
        return LazyTensors(source.directory / FULL_FILE)
    return read_weights(source.directory, source.meta, torch.device("cpu"))


def write_hf(
    source: ExportSource, folder: pathlib.Path, dtype: torch.dtype, *, progress: bool = False, stream: bool = True
) -> HFExport:
    """Write the merged model of ``source`` into ``folder`` (an empty folder being assembled atomically).

    ``stream``: read the base model (and a full fine-tune's checkpoint) a tensor at a time when it is a safetensors
    folder (see the module docstring); ``False`` loads both whole (the former path, kept for comparison).
    """
    base = open_export_base(source.meta.base_model, stream=stream)
    weights = checkpoint_weights(source, lazy=stream)
    plan, untie = merged_state(base, source, weights)
    files, total = _write_weights(plan, folder, dtype, base.tensors, progress)
    _write_config(base.config, folder, dtype, untie)
    generation = _write_generation_config(source.meta.base_model, folder)
    tokenizer = _write_tokenizer(base.tokenizer, folder)
    return HFExport(
        tensors=len(plan),
        total_bytes=total,
        files=files,
        untied=untie,
        tokenizer=tokenizer,
        generation_config=generation,
    )
