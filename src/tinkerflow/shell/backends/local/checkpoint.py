"""Local checkpoints: ``local://`` paths that mirror ``tinker://`` paths, and atomic directory writes. (Shell.)

A Tinker checkpoint path is ``tinker://<run id>/weights/<name>`` (a training state: weights and optimizer state)
or ``tinker://<run id>/sampler_weights/<name>`` (weights for sampling). The local backend writes the same
structure under its checkpoint directory::

    <checkpoint_dir>/
      <run id>/
        weights/<name>/                 local://<run id>/weights/<name>
          checkpoint.json               CheckpointMeta: base model, LoRA settings, optimizer steps, format version
          adapter_model.safetensors     LoRA weights, peft key names (or model.safetensors for full fine-tuning)
          adapter_config.json           peft LoraConfig (LoRA only), so peft can load the adapter directly
          optimizer.safetensors         AdamW moments and step count per trainable parameter (states only)
        sampler_weights/<name>/         local://<run id>/sampler_weights/<name>: the same minus the optimizer
        external_weights/<name>/        local://<run id>/external_weights/<name>: as sampler_weights, for export

Each checkpoint directory is written into a temporary sibling, every file and the directory fsynced, then renamed
into place with ``os.replace`` (and the parent fsynced), so a reader sees a complete checkpoint or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import attrs

from tinkerflow.errors import ConfigError, TinkerflowError, ValidationError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "CheckpointKind",
    "CheckpointMeta",
    "LocalPath",
    "atomic_directory",
    "peft_config",
    "read_meta",
    "read_tensors",
    "read_weights",
    "write_checkpoint",
    "write_meta",
]

CHECKPOINT_FORMAT: Final = 1
META_FILE: Final = "checkpoint.json"
SCHEME: Final = "local://"
ADAPTER_FILE: Final = "adapter_model.safetensors"
FULL_FILE: Final = "model.safetensors"
OPTIMIZER_FILE: Final = "optimizer.safetensors"
#: peft's prefix of adapter keys in ``adapter_model.safetensors`` (stripped in memory).
PEFT_PREFIX: Final = "base_model.model."

CheckpointKind: TypeAlias = Literal["weights", "sampler_weights", "external_weights"]
_KINDS: Final[tuple[CheckpointKind, ...]] = ("weights", "sampler_weights", "external_weights")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class CheckpointError(TinkerflowError):
    """A checkpoint is missing, incomplete or of another format."""


@attrs.frozen
class LocalPath:
    """A parsed ``local://<run_id>/<kind>/<name>`` path."""

    run_id: str
    kind: CheckpointKind
    name: str

    def __attrs_post_init__(self) -> None:
        for field, value in (("run_id", self.run_id), ("name", self.name)):
            if not _NAME.fullmatch(value):
                raise ValidationError(
                    "LocalPath",
                    field,
                    f"{value!r} is not a valid name.",
                    "use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit).",
                )
        if self.kind not in _KINDS:
            raise ValidationError("LocalPath", "kind", f"must be one of {_KINDS}, got {self.kind!r}.")

    @classmethod
    def parse(cls, path: str) -> LocalPath:
        """Parse ``local://run/weights/name``; raises :class:`ValidationError` for anything else."""
        if not isinstance(path, str) or not path.startswith(SCHEME):
            raise ValidationError(
                "LocalPath",
                "path",
                f"{path!r} is not a local:// checkpoint path.",
                "pass a path returned by save_state or save_weights_for_sampler of a LocalBackend client.",
            )
        parts = path[len(SCHEME) :].split("/")
        if len(parts) != 3:
            raise ValidationError(
                "LocalPath", "path", f"{path!r} must have the form local://<run id>/<weights|sampler_weights>/<name>."
            )
        run_id, kind, name = parts
        if kind not in _KINDS:
            raise ValidationError("LocalPath", "path", f"{path!r}: the middle part must be one of {_KINDS}.")
        return cls(run_id=run_id, kind=kind, name=name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.run_id}/{self.kind}/{self.name}"

    def directory(self, root: str | os.PathLike[str]) -> pathlib.Path:
        """Where this checkpoint lives under the checkpoint directory ``root``."""
        return pathlib.Path(root) / self.run_id / self.kind / self.name


@attrs.frozen
class CheckpointMeta:
    """``checkpoint.json``: what a local checkpoint holds.

    Attributes:
        base_model: the base model name the weights apply to.
        kind: ``weights`` (a training state) or ``sampler_weights``.
        lora_rank: the LoRA rank, or ``None`` for a full fine-tune (``model.safetensors`` holds every weight).
        lora_alpha: the LoRA scale numerator (scale = alpha / rank).
        target_modules: the module names LoRA adapts (empty for a full fine-tune).
        has_optimizer: whether ``optimizer.safetensors`` is present.
        optimizer_steps: AdamW steps taken when the checkpoint was written.
        seed: the seed the run was created with.
        format: the checkpoint format version.
    """

    base_model: str
    kind: CheckpointKind
    lora_rank: int | None
    lora_alpha: int
    target_modules: tuple[str, ...]
    has_optimizer: bool
    optimizer_steps: int
    seed: int | None
    format: int = CHECKPOINT_FORMAT

    def to_json(self) -> str:
        data = attrs.asdict(self)
        data["target_modules"] = list(self.target_modules)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> CheckpointMeta:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            data["target_modules"] = tuple(data.get("target_modules", ()))
            meta = cls(**data)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{where}: unreadable {META_FILE} ({error}).") from error
        if meta.format != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where}: checkpoint format {meta.format}, this tinkerflow reads {CHECKPOINT_FORMAT}."
            )
        return meta


def write_meta(directory: pathlib.Path, meta: CheckpointMeta) -> None:
    """Write ``checkpoint.json`` into a directory being assembled by :func:`atomic_directory`."""
    (directory / META_FILE).write_text(meta.to_json(), encoding="utf-8")


def read_meta(directory: pathlib.Path, path: str) -> CheckpointMeta:
    """Read a checkpoint's metadata; :class:`CheckpointError` if the checkpoint does not exist."""
    meta_file = directory / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: no checkpoint at {directory} (is the backend's checkpoint_dir the same?).")
    return CheckpointMeta.from_json(meta_file.read_text(encoding="utf-8"), path)


def _fsync_path(path: pathlib.Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems do not let a directory be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: pathlib.Path, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Assemble a directory in a temporary sibling and move it to ``target`` atomically on success.

    Yields the temporary directory to fill. On normal exit every file in it and the directory itself are
    fsynced, it is renamed to ``target`` (a previous ``target`` is replaced only with ``overwrite``) and the
    parent is fsynced. On error the temporary directory is removed and ``target`` is untouched.

    Raises:
        ConfigError: ``target`` exists and ``overwrite`` is false.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise ConfigError(
            "save", "name", f"a checkpoint already exists at {target}.", "choose another name or pass overwrite=True."
        )
    temp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temp
        for file in temp.rglob("*"):
            if file.is_file():
                _fsync_path(file)
        _fsync_path(temp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, target)
        _fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint contents: safetensors files in peft's layout


def peft_config(base_model: str, rank: int, alpha: int, target_modules: tuple[str, ...]) -> dict[str, object]:
    """A peft ``adapter_config.json`` for the adapter (so ``PeftModel.from_pretrained`` can load it)."""
    modules = sorted({name.rsplit(".", 1)[-1] for name in target_modules})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
    }


def write_checkpoint(
    directory: pathlib.Path,
    meta: CheckpointMeta,
    weights: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, torch.Tensor] | None,
    *,
    overwrite: bool,
) -> None:
    """Write a checkpoint atomically: the weights (peft adapter files for LoRA), the optimizer state when given,
    and ``checkpoint.json`` last."""
    from safetensors.torch import save_file

    with atomic_directory(directory, overwrite=overwrite) as temp:
        if meta.lora_rank is not None:
            save_file({PEFT_PREFIX + key: value for key, value in weights.items()}, str(temp / ADAPTER_FILE))
            config = peft_config(meta.base_model, meta.lora_rank, meta.lora_alpha, meta.target_modules)
            (temp / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        else:
            save_file(dict(weights), str(temp / FULL_FILE))
        if optimizer_state is not None:
            save_file(dict(optimizer_state), str(temp / OPTIMIZER_FILE))
        write_meta(temp, meta)


def read_tensors(file: pathlib.Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on ``device``; :class:`CheckpointError` when it is missing."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise CheckpointError(f"{file}: missing.")
    return load_file(str(file), device=str(device))


def read_weights(directory: pathlib.Path, meta: CheckpointMeta, device: torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights by parameter name (adapter keys without peft's prefix)."""
    if meta.lora_rank is None:
        return read_tensors(directory / FULL_FILE, device)
    raw = read_tensors(directory / ADAPTER_FILE, device)
    return {key.removeprefix(PEFT_PREFIX): value for key, value in raw.items()}
