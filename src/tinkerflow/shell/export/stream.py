"""The base model an export merges into: streamed tensor by tensor from its safetensors files, or loaded whole.
(Shell.)

:func:`open_export_base` gives an :class:`ExportBase`: the base's config and tokenizer, its state-dict keys with
their shapes and dtypes (known before any value is read), its tied keys, and :meth:`ExportBase.read`, which returns
the value of one key (fp32 when floating) when asked. The merge (:mod:`.merge`) and the ``gguf`` writer
(:mod:`.gguf_export`) read each base tensor once, when its output tensor is computed, and drop it afterwards.

* **Streamed** when the base model is a folder of safetensors files (``model.safetensors``, or shards listed by
  ``model.safetensors.index.json``): the embedded SmolLM2 (its converted folder), a local Hugging Face folder, or a
  hub name whose snapshot is in the local hub cache. The keys, shapes and tied pairs are those of the model built
  from the folder's config on the meta device (no memory); each key is found in the files as is, or without the
  model's base-model prefix when the files hold none (a checkpoint of the bare ``LlamaModel``, as ``from_pretrained``
  accepts it). A read opens the file that holds the key (``safetensors.safe_open``), reads that one tensor in its
  file dtype and converts it to fp32: the values ``from_pretrained(..., dtype=torch.float32)`` gives, bit for bit.
  The two keys of a tied pair (``lm_head.weight`` tied to ``model.embed_tokens.weight``) read whichever one the files
  hold. A persistent buffer the files do not hold is left out (``from_pretrained`` computes it).
* **Loaded whole** (``load_base_model``, fp32 on the CPU, as before) otherwise: the tiny ``tiny-llama`` /
  ``tiny-qwen3`` specs (built from their config and seed), folders without safetensors weights (``pytorch_model.bin``)
  and folders whose files do not map onto the model plainly: a parameter missing or of another shape, both keys of a
  tied pair stored (transformers ties them only when they are equal), a ``quantization_config``, an
  ``adapter_config.json`` (a PEFT folder), a model type whose weights transformers converts on load.
"""

from __future__ import annotations

import json
import pathlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import attrs

from tinkerflow.shell.backends.local.checkpoint import CheckpointError
from tinkerflow.shell.backends.local.embedded import (
    EMBEDDED_NAMES,
    MODEL_CONSTRUCTION_LOCK,
    embedded_model_dir,
    quiet_transformers,
)
from tinkerflow.shell.backends.local.models import TinyModelSpec

if TYPE_CHECKING:
    import torch

    from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
    from tinkerflow.shell.backends.local.models import ByteTokenizer

__all__ = ["ExportBase", "LazyTensors", "base_folder", "open_export_base", "read_tensor", "tied_groups"]

#: The value of one key of the base model, read when called.
Reader: TypeAlias = "Callable[[str], torch.Tensor]"

_SINGLE_FILE: Final = "model.safetensors"
_INDEX_FILE: Final = "model.safetensors.index.json"


@attrs.frozen(eq=False)
class ExportBase:
    """The base model of an export.

    Attributes:
        name: the base model name (as the checkpoint records it).
        config: its transformers config.
        tokenizer: its tokenizer.
        tensors: its weights by state-dict key, in state-dict order: the loaded tensors, or (streamed) tensors on the
            meta device with the shape and the dtype :meth:`read` returns; only for their shape and dtype.
        groups: keys that share one tensor (tied embeddings), each group in state-dict order.
        reader: the value of a key (see :meth:`read`).
        streamed: whether values are read from the files when asked (else they are in memory).
    """

    name: str
    config: object
    tokenizer: HFTokenizer | ByteTokenizer
    tensors: Mapping[str, torch.Tensor]
    groups: tuple[tuple[str, ...], ...]
    reader: Reader
    streamed: bool

    def read(self, key: str) -> torch.Tensor:
        """The value of ``key``: fp32 when floating (else its own dtype); streamed, a fresh tensor each call."""
        return self.reader(key)


def tied_groups(state: Mapping[str, torch.Tensor]) -> list[tuple[str, ...]]:
    """Keys of ``state`` that share one tensor (tied embeddings), each group in state order."""
    by_pointer: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for key, tensor in state.items():
        by_pointer.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(key)
    return [tuple(keys) for keys in by_pointer.values() if len(keys) > 1]


def read_tensor(file: pathlib.Path, key: str) -> torch.Tensor:
    """The tensor ``key`` of the safetensors ``file``, in its file dtype (the file is open for this read only)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        tensor: torch.Tensor = handle.get_tensor(key)
    return tensor


def _as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def _header(file: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors of a safetensors ``file`` by key (from its header; no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle is no dict: keys() is how it lists tensors


class LazyTensors(Mapping[str, "torch.Tensor"]):
    """The tensors of a safetensors file as a mapping whose values are read when looked up (a fresh tensor each
    time, in the file's dtype): a full fine-tune's checkpoint, merged a tensor at a time."""

    def __init__(self, file: pathlib.Path) -> None:
        if not file.is_file():
            raise CheckpointError(f"{file}: missing.")
        self._file = file
        self._keys = tuple(_header(file))
        self._known = frozenset(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._known:
            raise KeyError(key)
        return read_tensor(self._file, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._known


@attrs.frozen
class _FileReader:
    """Reads an output key from the file (and under the file key) that holds it, converted to fp32."""

    locations: Mapping[str, tuple[pathlib.Path, str]]

    def __call__(self, key: str) -> torch.Tensor:
        file, name = self.locations[key]
        return _as_fp32(read_tensor(file, name))


def open_export_base(name: str, *, stream: bool = True) -> ExportBase:
    """The base model ``name`` for an export: streamed from its safetensors files when it can be (and ``stream``),
    else loaded whole (fp32, CPU). See the module docstring.

    Raises:
        ConfigError: the name is a malformed tiny spec, or nothing can be loaded under it.
    """
    if stream:
        streamed = _streamed(name)
        if streamed is not None:
            return streamed
    return _loaded(name)


def _loaded(name: str) -> ExportBase:
    import torch

    from tinkerflow.shell.backends.local.models import load_base_model

    base = load_base_model(name, torch.device("cpu"), torch.float32)
    return ExportBase(
        name=name,
        config=base.config,
        tokenizer=base.tokenizer,
        tensors=base.state,
        groups=tuple(tied_groups(base.state)),
        reader=base.state.__getitem__,
        streamed=False,
    )


def base_folder(name: str) -> pathlib.Path | None:
    """The folder ``from_pretrained`` loads the base model ``name`` from: the embedded model's, a local folder, or
    a hub name's snapshot in the local hub cache; ``None`` for a tiny spec or a name not cached here."""
    if TinyModelSpec.parse(name) is not None:
        return None
    if name in EMBEDDED_NAMES:
        return embedded_model_dir()
    folder = pathlib.Path(name).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return pathlib.Path(snapshot_download(name, local_files_only=True))
    except (ImportError, OSError, ValueError):  # not in the cache (LocalEntryNotFoundError), not a repo name
        return None


def _weight_files(folder: pathlib.Path) -> dict[pathlib.Path, dict[str, tuple[int, ...]]] | None:
    """The safetensors files ``from_pretrained`` would read in ``folder`` with their tensor shapes, or ``None``."""
    single = folder / _SINGLE_FILE
    if single.is_file():
        return {single: _header(single)}
    index = folder / _INDEX_FILE
    if not index.is_file():
        return None
    weight_map: Mapping[str, str] = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
    files = [folder / file for file in dict.fromkeys(weight_map.values())]
    if not files or not all(file.is_file() for file in files):
        return None
    return {file: _header(file) for file in files}


def _meta_model(config: object) -> Any:
    """The causal LM of ``config`` on the meta device: its state-dict keys, shapes and ties, without memory."""
    import torch
    from transformers import AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # from_config is untyped
    with MODEL_CONSTRUCTION_LOCK, torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return auto.from_config(config, dtype=torch.float32)


def _converts_on_load(model: object) -> bool:
    """Whether transformers renames or converts this model's weights on load (then only it knows the mapping)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # older transformers: no conversions
        return False
    return bool(get_model_conversion_mapping(cast("Any", model), add_legacy=False))


def _streamed(name: str) -> ExportBase | None:
    folder = base_folder(name)
    if folder is None or (folder / "adapter_config.json").exists():
        return None
    files = _weight_files(folder)
    if files is None:
        return None
    from transformers import AutoConfig

    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config: Any = AutoConfig.from_pretrained(str(folder))
    if getattr(config, "quantization_config", None):
        return None
    model = _meta_model(config)
    if _converts_on_load(model):
        return None
    locations = _locate(model, files)
    if locations is None:
        return None
    state = model.state_dict(keep_vars=True)
    tensors = {key: tensor.detach() for key, tensor in state.items() if key in locations}
    groups: dict[int, list[str]] = {}
    for key, tensor in state.items():
        if key in locations:
            groups.setdefault(id(tensor), []).append(key)
    from tinkerflow.shell.backends.local.models import load_tokenizer

    return ExportBase(
        name=name,
        config=model.config,
        tokenizer=load_tokenizer(str(folder)),  # the folder's own files (a hub name: offline, from the cache)
        tensors=tensors,
        groups=tuple(tuple(keys) for keys in groups.values() if len(keys) > 1),
        reader=_FileReader(locations),
        streamed=True,
    )


def _locate(
    model: Any, files: Mapping[pathlib.Path, Mapping[str, tuple[int, ...]]]
) -> dict[str, tuple[pathlib.Path, str]] | None:
    """Where each state-dict key of ``model`` is read from (file, key in the file); ``None`` when the files do not
    map onto the model plainly (see the module docstring)."""
    shapes: dict[str, tuple[pathlib.Path, tuple[int, ...]]] = {}
    for file, header in files.items():
        for key, shape in header.items():
            shapes.setdefault(key, (file, shape))
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    bare = bool(prefix) and not any(key.startswith(prefix) for key in shapes)
    state = model.state_dict(keep_vars=True)
    buffers = {key for key, _ in model.named_buffers()}
    found: dict[str, tuple[pathlib.Path, str]] = {}
    for key, tensor in state.items():
        stored = key.removeprefix(prefix) if bare else key
        if stored in shapes:
            file, shape = shapes[stored]
            if shape != tuple(tensor.shape):
                return None
            found[key] = (file, stored)
    groups: dict[int, list[str]] = {}
    for key, tensor in state.items():
        groups.setdefault(id(tensor), []).append(key)
    locations: dict[str, tuple[pathlib.Path, str]] = {}
    for keys in groups.values():
        present = [found[key] for key in keys if key in found]
        if len(present) > 1:  # both keys of a tied pair stored: transformers ties them only if they are equal
            return None
        if not present:
            if all(key in buffers for key in keys):  # a buffer the files do not hold: from_pretrained computes it
                continue
            return None
        for key in keys:
            locations[key] = present[0]
    return locations
