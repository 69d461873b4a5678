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

Trust:

* ``checkpoint.json`` records the sha256 of every other file of the checkpoint; :func:`read_tensors` and
  :func:`read_weights` check it before loading a file, and :func:`verify_checkpoint` checks a whole checkpoint, so
  a flipped byte is a :class:`CheckpointError` naming the file, never weights silently loaded wrong (checkpoints
  written before the hashes existed load unchecked).
* The temporary directory of a write (``.<name>.<random>.tmp``) is locked (``flock``) while it is written; a kill
  leaves it behind unlocked, and :func:`remove_partial_checkpoints` removes exactly those (a write in progress, by
  this or another process sharing the folder, holds its lock and is left alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import sys
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
    "delete_checkpoint",
    "file_sha256",
    "peft_config",
    "read_meta",
    "read_tensors",
    "read_weights",
    "remove_partial_checkpoints",
    "verify_checkpoint",
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
#: What a write leaves behind when it is killed: its temporary directory, or the previous checkpoint it replaces.
_PARTIAL = re.compile(r"\.(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\.[a-z0-9_]{8}\.tmp")
_REPLACED = re.compile(r"\.(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\.old-(?P<pid>[0-9]+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK: Final = 1 << 20


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


def _digests(value: object) -> tuple[tuple[str, str], ...]:
    """``sha256`` as sorted ``(file name, hex digest)`` pairs, from a mapping or pairs; ``TypeError`` otherwise."""
    items = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(items, (tuple, list)):
        raise TypeError(f"sha256 must map file names to hex digests, got {type(value).__name__}")
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, digest = item if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None)
        if not isinstance(name, str) or not isinstance(digest, str) or not _NAME.fullmatch(name):
            raise TypeError(f"sha256 must map file names to 64 hex digits, got {item!r}")
        if not _SHA256.fullmatch(digest):
            raise TypeError(f"sha256 of {name!r} must be 64 hex digits, got {digest!r}")
        pairs.append((name, digest))
    return tuple(sorted(pairs))


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
        sha256: the sha256 (hex) of every other file of the checkpoint, by file name, sorted (empty in
            checkpoints written before hashes were recorded: those load unchecked).
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
    sha256: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_digests)

    def to_json(self) -> str:
        data = attrs.asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["sha256"] = dict(self.sha256)
        return json.dumps(data, indent=2, sort_keys=True)

    def digest_of(self, file_name: str) -> str | None:
        """The recorded sha256 of ``file_name`` (``None`` when none was recorded)."""
        return dict(self.sha256).get(file_name)

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


def file_sha256(file: pathlib.Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(file: pathlib.Path, expected: str | None) -> None:
    """Raise :class:`CheckpointError` naming ``file`` when it is missing or its sha256 is not ``expected``."""
    if not file.is_file():
        raise CheckpointError(f"{file}: missing.")
    if expected is not None and (actual := file_sha256(file)) != expected:
        raise CheckpointError(
            f"{file}: corrupt (sha256 {actual[:16]}..., checkpoint.json recorded {expected[:16]}...); "
            "resume from an earlier checkpoint or save this one again."
        )


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

    Yields the temporary directory to fill; it stays locked (``flock``) until the block ends, so
    :func:`remove_partial_checkpoints` never takes a write in progress for a killed one. On normal exit every file
    in it and the directory itself are fsynced, it is renamed to ``target`` (a previous ``target`` is replaced
    only with ``overwrite``) and the parent is fsynced. On error the temporary directory is removed and ``target``
    is untouched.

    Raises:
        ConfigError: ``target`` exists and ``overwrite`` is false.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise ConfigError(
            "save", "name", f"a checkpoint already exists at {target}.", "choose another name or pass overwrite=True."
        )
    temp, lock = _locked_temp_dir(target)
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
    finally:
        if lock is not None:
            os.close(lock)


def _try_lock(fd: int, *, wait: bool) -> bool:
    """An exclusive ``flock`` on ``fd`` (``False`` when another open file holds it and ``wait`` is false)."""
    if sys.platform == "win32":  # no flock: nothing is ever taken for a killed write
        return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _locked_temp_dir(target: pathlib.Path) -> tuple[pathlib.Path, int | None]:
    """A new temporary sibling of ``target`` and a descriptor holding its lock (``None`` where there is no flock).

    A cleaner may catch the directory between its creation and the lock; it removes it while holding the lock,
    so once the lock is ours the directory is checked to still be the one created, else a new one is made.
    """
    while True:
        temp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        if sys.platform == "win32":  # no flock (and no directory descriptors): the write is not marked
            return temp, None
        try:
            fd = os.open(temp, os.O_RDONLY)
        except FileNotFoundError:  # removed before we could even open it
            continue
        _try_lock(fd, wait=True)
        try:
            same = os.path.samestat(os.stat(temp), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return temp, fd
        os.close(fd)


def _remove_if_abandoned(entry: pathlib.Path) -> bool:
    """Remove a write's temporary directory unless its writer is alive (holds its lock); whether it was removed."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_lock(fd, wait=False) or not os.path.samestat(os.stat(entry), os.fstat(fd)):
            return False  # a live writer, or one that finished (renamed it into place) since we opened it
        shutil.rmtree(entry, ignore_errors=True)
        return not entry.exists()
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_partial_checkpoints(root: pathlib.Path) -> list[pathlib.Path]:
    """Clean up after killed checkpoint writes under the checkpoint directory ``root``; what was removed.

    * a write's temporary directory (``<run>/<kind>/.<name>.<random>.tmp``) is removed when no process holds its
      lock (its writer was killed; a write in progress, here or in another process, is left alone);
    * the previous checkpoint an overwrite set aside (``.<name>.old-<pid>``), once that process is gone: removed
      when ``<name>`` is in place, else moved back to ``<name>`` (the kill fell between the two renames).
    """
    removed: list[pathlib.Path] = []
    if not root.is_dir():
        return removed
    for kind_dir in sorted(root.glob("*/*")):
        if kind_dir.name not in _KINDS or not kind_dir.is_dir():
            continue
        for entry in sorted(kind_dir.iterdir()):
            if _PARTIAL.fullmatch(entry.name) and entry.is_dir():
                if _remove_if_abandoned(entry):
                    removed.append(entry)
            elif (match := _REPLACED.fullmatch(entry.name)) and not _pid_alive(int(match["pid"])):
                original = entry.with_name(match["name"])
                if original.exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                else:
                    os.replace(entry, original)
    return removed


def delete_checkpoint(root: pathlib.Path, path: str) -> bool:
    """Delete the checkpoint ``path`` (``local://...``) under ``root``; whether there was one.

    The directory is first renamed to a hidden temporary name (atomic), so a kill while its files are removed
    leaves no half checkpoint under its name, only a leftover :func:`remove_partial_checkpoints` removes.
    """
    directory = LocalPath.parse(path).directory(root)
    if not directory.is_dir():
        return False
    doomed = directory.with_name(f".{directory.name}.{secrets.token_hex(4)}.tmp")
    os.replace(directory, doomed)
    _fsync_path(directory.parent)
    shutil.rmtree(doomed, ignore_errors=True)
    return True


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
    and ``checkpoint.json`` last, with the sha256 of every other file."""
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
        files = sorted(file for file in temp.iterdir() if file.is_file() and file.name != META_FILE)
        write_meta(temp, attrs.evolve(meta, sha256=_digests({file.name: file_sha256(file) for file in files})))


def _needed_files(meta: CheckpointMeta) -> list[str]:
    """The files a checkpoint's metadata implies (weights, and the optimizer state when it has one)."""
    return [FULL_FILE if meta.lora_rank is None else ADAPTER_FILE] + ([OPTIMIZER_FILE] if meta.has_optimizer else [])


def verify_checkpoint(directory: pathlib.Path, path: str) -> CheckpointMeta:
    """A checkpoint's metadata after checking that every file it implies is there and every recorded hash matches.

    Raises:
        CheckpointError: no or unreadable ``checkpoint.json``, a missing file, or a file whose sha256 differs from
            the recorded one (naming the file).
    """
    meta = read_meta(directory, path)
    for name in sorted(set(_needed_files(meta)) | {name for name, _ in meta.sha256}):
        _check_digest(directory / name, meta.digest_of(name))
    return meta


def read_tensors(
    file: pathlib.Path, device: torch.device, meta: CheckpointMeta | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on ``device``, after checking its recorded sha256 (from ``meta``, else
    from the ``checkpoint.json`` beside it, when there is one).

    Raises:
        CheckpointError: the file is missing, corrupt (hash mismatch) or not readable as safetensors.
    """
    from safetensors.torch import load_file

    if meta is None and (file.parent / META_FILE).is_file():
        meta = read_meta(file.parent, str(file.parent))
    _check_digest(file, meta.digest_of(file.name) if meta is not None else None)
    try:
        return load_file(str(file), device=str(device))
    except Exception as error:  # safetensors raises its own error types for a damaged header or data
        raise CheckpointError(f"{file}: not a readable safetensors file ({error}).") from error


def read_weights(directory: pathlib.Path, meta: CheckpointMeta, device: torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights by parameter name (adapter keys without peft's prefix), hash-checked."""
    if meta.lora_rank is None:
        return read_tensors(directory / FULL_FILE, device, meta)
    raw = read_tensors(directory / ADAPTER_FILE, device, meta)
    return {key.removeprefix(PEFT_PREFIX): value for key, value in raw.items()}
