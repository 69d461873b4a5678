"""Export a trained checkpoint so it leaves tinkerflow: a Hugging Face model folder, a PEFT adapter or a GGUF file.
(Shell.)

``export_checkpoint(source, out, fmt, dtype=None)`` (and ``tinkerflow export``, :mod:`.command`):

* ``hf``: LoRA merged into the base weights (:mod:`.merge`), a folder plain ``transformers`` loads;
* ``peft``: the adapter in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's
  ``base_model.model.`` key names), for ``peft.PeftModel.from_pretrained(base, out)``; a full fine-tune has no
  adapter and is refused;
* ``gguf``: the merged model (the same merge as ``hf``) as ``model.gguf`` for llama.cpp / ollama, 2-D weights in
  ``quant`` (``f16``, ``q8_0``, ``bf16`` or ``f32``), with the tokenizer and chat template (:mod:`.gguf_export`).

The base model is read a tensor at a time from its safetensors files when it has them, so ``hf`` holds about one
output shard and ``gguf`` one tensor, never the whole model (:mod:`.stream`).

Sources are resolved by :mod:`.sources` (``local://`` paths, checkpoint folders, run directories). The output folder
is assembled beside ``out`` and renamed into place, so a failed export leaves nothing behind. Every format adds an
``export.json`` saying what was exported from where. See ``docs/export.md``.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import attrs

from tinkerflow.errors import ConfigError

if TYPE_CHECKING:  # the rest is imported when an export runs, so `tinkerflow export --help` loads no torch
    import torch

    from tinkerflow.shell.export.sources import DownloadOptions, ExportSource

__all__ = ["DTYPES", "FORMATS", "GGUF_QUANTS", "ExportFormat", "ExportResult", "export_checkpoint"]

ExportFormat: TypeAlias = Literal["hf", "peft", "gguf"]
FORMATS: Final[tuple[ExportFormat, ...]] = ("hf", "peft", "gguf")
#: The dtypes an export may be written in.
DTYPES: Final = ("float32", "bfloat16", "float16")
#: The tensor types of a ``gguf`` export's 2-D weights (the first is the default); kept in step with
#: :data:`.gguf_export.GGUF_QUANTS`, which loads nothing heavy but is not imported here.
GGUF_QUANTS: Final = ("f16", "q8_0", "bf16", "f32")
#: The provenance file both formats add.
EXPORT_FILE: Final = "export.json"
#: The hub name written as a PEFT adapter's base model for the embedded model.
_EMBEDDED_HUB_NAME: Final = "HuggingFaceTB/SmolLM2-135M-Instruct"
_WHERE: Final = "export"


@attrs.frozen
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        out: the output folder.
        format: ``hf``, ``peft`` or ``gguf``.
        dtype: the dtype of the written tensors (for ``gguf``: the tensor type of its 2-D weights).
        source: the checkpoint exported, as named.
        base_model: the base model name of the checkpoint.
        files: the weight files written.
        total_bytes: the size of the written tensors.
        untied: whether tied input and output embeddings were untied (``hf`` with an ``lm_head`` adapter).
    """

    out: pathlib.Path
    format: ExportFormat
    dtype: str
    source: str
    base_model: str
    files: tuple[str, ...]
    total_bytes: int
    untied: bool = False


def export_checkpoint(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str,
    dtype: str | None = None,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    step: int | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    download: DownloadOptions | None = None,
    quant: str | None = None,
) -> ExportResult:
    """Export the checkpoint ``source`` into the folder ``out`` in the format ``fmt`` (``hf``, ``peft`` or ``gguf``).

    Args:
        source: ``local://<run>/<kind>/<name>``, a ``tinker://`` path (downloaded first), a checkpoint folder or a
            run directory (see :mod:`.sources`).
        out: the folder to write (must not exist unless ``overwrite``).
        fmt: ``hf`` (merged model), ``peft`` (adapter) or ``gguf`` (merged model for llama.cpp).
        dtype: ``float32``, ``bfloat16`` or ``float16``; default ``float32`` for ``hf`` (the merge is exact in
            fp32) and the adapter's saved dtype for ``peft``.
        checkpoint_dir: where ``local://`` paths resolve (default ``$TINKERFLOW_CACHE/checkpoints``).
        step: in a run directory, the checkpoint of this step instead of the latest.
        name: in a run directory, the checkpoint of this name instead of the latest.
        overwrite: replace an existing ``out``.
        progress: draw a progress bar over tensors (stderr).
        download: how a ``tinker://`` source is downloaded (server, key, kept folder); default from the
            environment (``TINKER_BASE_URL``, ``TINKER_API_KEY``) into a temporary folder.
        quant: ``gguf`` only: ``f16`` (default), ``q8_0``, ``bf16`` or ``f32`` for the 2-D weights (norms stay f32).

    Raises:
        ConfigError: an unknown format, dtype or quant (or one given to a format without it), a missing source,
            an existing ``out``, ``peft`` of a full fine-tune, or ``gguf`` of an architecture, rope scaling or
            tokenizer it does not support (each naming the field and the fix).
        CheckpointError: the checkpoint's files are incomplete or do not fit its base model.
    """
    if fmt not in FORMATS:
        raise ConfigError(_WHERE, "format", f"unknown format {fmt!r}.", f"use one of {', '.join(FORMATS)}.")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(_WHERE, "dtype", f"unknown dtype {dtype!r}.", f"use one of {', '.join(DTYPES)}.")
    _check_quant(fmt, dtype, quant)
    from tinkerflow.shell.backends.local.checkpoint import atomic_directory
    from tinkerflow.shell.export.sources import resolve_source

    resolved = resolve_source(source, checkpoint_dir=checkpoint_dir, step=step, name=name, download=download)
    target = pathlib.Path(out).expanduser()
    _check_target(target, resolved, overwrite)
    if fmt == "peft" and not resolved.is_lora:
        raise ConfigError(
            _WHERE,
            "format",
            f"{resolved.label} is a full fine-tune (model.safetensors, no LoRA adapter), so it has no PEFT form.",
            "export it with format 'hf' (--format hf), which writes the whole model.",
        )
    with atomic_directory(target, overwrite=overwrite) as temp:
        if fmt == "hf":
            result = _export_hf(resolved, temp, target, dtype or "float32", progress)
        elif fmt == "gguf":
            result = _export_gguf(resolved, temp, target, quant or GGUF_QUANTS[0], progress)
        else:
            result = _export_peft(resolved, temp, target, dtype)
        _write_provenance(temp, result, resolved)
    return result


def _check_quant(fmt: str, dtype: str | None, quant: str | None) -> None:
    if fmt != "gguf":
        if quant is not None:
            raise ConfigError(_WHERE, "quant", f"quant is for format 'gguf', not {fmt!r}.", "use dtype (--dtype).")
        return
    if dtype is not None:
        raise ConfigError(
            _WHERE, "dtype", "format 'gguf' takes quant, not dtype.", f"use quant (--quant {'|'.join(GGUF_QUANTS)})."
        )
    if quant is not None and quant not in GGUF_QUANTS:
        raise ConfigError(_WHERE, "quant", f"unknown quant {quant!r}.", f"use one of {', '.join(GGUF_QUANTS)}.")


def _check_target(target: pathlib.Path, source: ExportSource, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ConfigError(
            _WHERE, "out", f"{target} already exists.", "choose another folder or pass overwrite=True (--overwrite)."
        )
    resolved, origin = target.resolve(), source.directory.resolve()
    if resolved == origin or resolved in origin.parents:
        raise ConfigError(
            _WHERE, "out", f"{target} holds the checkpoint being exported.", "write the export to another folder."
        )


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _export_hf(
    source: ExportSource, temp: pathlib.Path, target: pathlib.Path, dtype: str, progress: bool
) -> ExportResult:
    from tinkerflow.shell.export.merge import write_hf

    written = write_hf(source, temp, _torch_dtype(dtype), progress=progress)
    return ExportResult(
        out=target,
        format="hf",
        dtype=dtype,
        source=source.label,
        base_model=source.meta.base_model,
        files=written.files,
        total_bytes=written.total_bytes,
        untied=written.untied,
    )


def _export_gguf(
    source: ExportSource, temp: pathlib.Path, target: pathlib.Path, quant: str, progress: bool
) -> ExportResult:
    from tinkerflow.shell.export.gguf_export import write_gguf

    written = write_gguf(source, temp, quant, progress=progress)
    return ExportResult(
        out=target,
        format="gguf",
        dtype=quant,
        source=source.label,
        base_model=source.meta.base_model,
        files=(written.file,),
        total_bytes=written.total_bytes,
        untied=written.untied,
    )


def peft_base_name(base_model: str) -> str:
    """The base model name a PEFT adapter records: the hub name for the embedded model, else the name itself."""
    from tinkerflow.shell.backends.local.embedded import EMBEDDED_NAMES

    return _EMBEDDED_HUB_NAME if base_model in EMBEDDED_NAMES else base_model


def _export_peft(source: ExportSource, temp: pathlib.Path, target: pathlib.Path, dtype: str | None) -> ExportResult:
    import torch
    from safetensors.torch import save_file

    from tinkerflow.shell.backends.local.checkpoint import ADAPTER_FILE, PEFT_PREFIX, peft_config, read_tensors

    raw = read_tensors(source.directory / ADAPTER_FILE, torch.device("cpu"))
    tensors = {
        (key if key.startswith(PEFT_PREFIX) else PEFT_PREFIX + key): (
            value.to(_torch_dtype(dtype)) if dtype is not None else value
        ).contiguous()
        for key, value in raw.items()
    }
    save_file(tensors, str(temp / ADAPTER_FILE), metadata={"format": "pt"})
    meta = source.meta
    rank = meta.lora_rank if meta.lora_rank is not None else 0
    config = peft_config(peft_base_name(meta.base_model), rank, meta.lora_alpha, meta.target_modules)
    (temp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    first = next(iter(tensors.values()), None)
    return ExportResult(
        out=target,
        format="peft",
        dtype=dtype or (str(first.dtype).removeprefix("torch.") if first is not None else "float32"),
        source=source.label,
        base_model=meta.base_model,
        files=(ADAPTER_FILE,),
        total_bytes=sum(tensor.numel() * tensor.element_size() for tensor in tensors.values()),
    )


def _write_provenance(temp: pathlib.Path, result: ExportResult, source: ExportSource) -> None:
    from tinkerflow import __version__

    meta = source.meta
    record = {
        "format": result.format,
        "dtype": result.dtype,
        "source": result.source,
        "base_model": meta.base_model,
        "lora_rank": meta.lora_rank,
        "lora_alpha": meta.lora_alpha,
        "target_modules": list(meta.target_modules),
        "optimizer_steps": meta.optimizer_steps,
        "untied_embeddings": result.untied,
        "files": list(result.files),
        "tinkerflow_version": __version__,
    }
    (temp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
