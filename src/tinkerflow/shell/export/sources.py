"""What an export reads: a local checkpoint named by a ``local://`` path, a folder, a run directory or a
``tinker://`` path (downloaded first). (Shell.)

A source is one of:

* ``local://<run>/<weights|sampler_weights|external_weights>/<name>``, resolved under a checkpoint directory (the
  ``LocalBackend`` default ``$TINKERFLOW_CACHE/checkpoints`` unless one is given);
* a checkpoint folder: one holding ``checkpoint.json`` and the adapter (or full) weights;
* a run directory of ``tinkerflow sl|dpo|rl`` with the local backend: its checkpoints live under
  ``<run>/checkpoints/<run id>/weights/step-NNNNNN``; the latest is the one ``state.json`` records, an earlier one is
  chosen by its step (``step``) or by its checkpoint name (``name``).

* ``tinker://<run>/<weights|sampler_weights|external_weights>/<name>``: downloaded through the ``tinker`` SDK
  (:mod:`.download`; ``TINKER_BASE_URL`` / ``TINKER_API_KEY`` or :class:`DownloadOptions`) into a temporary folder
  under ``$TINKERFLOW_CACHE/downloads`` that is removed when the returned source is released (or into
  ``DownloadOptions.keep``, kept). A checkpoint of ``tinkerflow serve`` downloads as a local checkpoint. A run
  directory whose latest checkpoint is a ``tinker://`` path (a run on a Tinker server) downloads that one.

Download settings come from the ``download`` argument, else from the innermost :func:`download_options` block (how
``tinkerflow export --base-url ... --keep-download ...`` reaches :func:`resolve_source` through
``export_checkpoint``), else the defaults (the SDK's environment variables, no progress bar, a temporary folder).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Final

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.checkpoint import (
    META_FILE,
    SCHEME,
    CheckpointMeta,
    LocalPath,
    read_meta,
)
from tinkerflow.shell.io.run_dir import STATE_FILE, read_state

__all__ = [
    "CHECKPOINTS_SUBDIR",
    "DOWNLOADS_SUBDIR",
    "DownloadOptions",
    "ExportSource",
    "default_checkpoint_dir",
    "download_options",
    "resolve_source",
]

#: Where a run directory keeps its local checkpoints (``cli._backend`` puts them there).
CHECKPOINTS_SUBDIR: Final = "checkpoints"
#: Where ``tinker://`` checkpoints are downloaded for an export, under ``$TINKERFLOW_CACHE``.
DOWNLOADS_SUBDIR: Final = "downloads"
_TINKER: Final = "tinker://"
_WHERE: Final = "export"
_STEP_NAME = re.compile(r"step-(\d+)")


@attrs.frozen
class ExportSource:
    """A resolved local checkpoint.

    Attributes:
        directory: the checkpoint folder (``checkpoint.json``, adapter or full weights).
        meta: its ``checkpoint.json``.
        label: how the user named it (for messages and ``export.json``).
    """

    directory: pathlib.Path
    meta: CheckpointMeta
    label: str

    @property
    def is_lora(self) -> bool:
        return self.meta.lora_rank is not None


def _optional_path(value: str | os.PathLike[str] | None) -> pathlib.Path | None:
    return None if value is None else pathlib.Path(value).expanduser()


@attrs.frozen
class DownloadOptions:
    """How a ``tinker://`` source is downloaded (see :func:`~tinkerflow.shell.export.download.download_checkpoint`).

    Attributes:
        base_url: the Tinker API (default ``$TINKER_BASE_URL``, else the Tinker service).
        api_key: the key (default ``$TINKER_API_KEY``, else the SDK's other credentials).
        progress: draw a progress bar per downloaded file (stderr).
        keep: download into this folder (which must not exist) and keep it; default a temporary folder under
            ``$TINKERFLOW_CACHE/downloads``, removed when the :class:`ExportSource` is released.
    """

    base_url: str | None = None
    api_key: str | None = None
    progress: bool = False
    keep: pathlib.Path | None = attrs.field(default=None, converter=_optional_path)


_DOWNLOAD: contextvars.ContextVar[DownloadOptions | None] = contextvars.ContextVar("export_download", default=None)


@contextlib.contextmanager
def download_options(options: DownloadOptions) -> Iterator[None]:
    """Within the block, :func:`resolve_source` downloads ``tinker://`` sources with ``options``."""
    token = _DOWNLOAD.set(options)
    try:
        yield
    finally:
        _DOWNLOAD.reset(token)


def default_checkpoint_dir() -> pathlib.Path:
    """The ``LocalBackend`` default checkpoint directory, ``$TINKERFLOW_CACHE/checkpoints``."""
    from tinkerflow.shell.backends.local.embedded import cache_root

    return cache_root() / CHECKPOINTS_SUBDIR


def resolve_source(
    source: str | os.PathLike[str],
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    step: int | None = None,
    name: str | None = None,
    download: DownloadOptions | None = None,
) -> ExportSource:
    """The checkpoint ``source`` names (see the module docstring); a ``tinker://`` source is downloaded first.

    Raises:
        ConfigError: the source does not exist, is not a checkpoint, folder or run directory, or ``step`` / ``name``
            do not fit it; for a ``tinker://`` source also no key, no server, an unknown checkpoint (each naming the
            field and the fix).
        CheckpointError: a ``tinker://`` download failed or its files do not parse.
    """
    text = os.fspath(source)
    if step is not None and name is not None:
        raise ConfigError(_WHERE, "step", "give a step or a checkpoint name, not both.", "drop --step or --name.")
    if text.startswith(_TINKER):
        _no_selector(text, step, name)
        return _downloaded(text, text, download)
    if text.startswith(SCHEME):
        _no_selector(text, step, name)
        parsed = LocalPath.parse(text)
        root = pathlib.Path(checkpoint_dir) if checkpoint_dir is not None else default_checkpoint_dir()
        return _checkpoint_at(parsed.directory(root), text, f"is it under --checkpoint-dir {root}?")
    folder = pathlib.Path(text).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            _WHERE,
            "source",
            f"{text!r} is neither a local:// path nor an existing folder.",
            "pass local://<run>/<kind>/<name>, a checkpoint folder (with checkpoint.json) or a run directory.",
        )
    if (folder / META_FILE).is_file():
        _no_selector(text, step, name)
        return _checkpoint_at(folder, text, "")
    if (folder / STATE_FILE).is_file() or (folder / CHECKPOINTS_SUBDIR).is_dir():
        return _from_run(folder, text, step, name)
    raise ConfigError(
        _WHERE,
        "source",
        f"{folder} holds neither a checkpoint ({META_FILE}) nor a run ({STATE_FILE}, {CHECKPOINTS_SUBDIR}/).",
        "pass a checkpoint folder, a run directory of the local backend or a local:// path.",
    )


def _no_selector(text: str, step: int | None, name: str | None) -> None:
    if step is not None or name is not None:
        field = "step" if step is not None else "name"
        raise ConfigError(
            _WHERE, field, f"{text!r} names one checkpoint already.", f"drop --{field} (it selects within a run)."
        )


def _checkpoint_at(directory: pathlib.Path, label: str, hint: str) -> ExportSource:
    if not (directory / META_FILE).is_file():
        raise ConfigError(
            _WHERE,
            "source",
            f"{label}: no checkpoint at {directory} (no {META_FILE}).",
            hint or "pass a checkpoint that exists (save_state / save_weights_for_sampler return such paths).",
        )
    return ExportSource(directory=directory, meta=read_meta(directory, label), label=label)


def _from_run(run: pathlib.Path, label: str, step: int | None, name: str | None) -> ExportSource:
    root = run / CHECKPOINTS_SUBDIR
    if step is not None:
        if step < 0:
            raise ConfigError(_WHERE, "step", f"must be >= 0, got {step}.")
        found = sorted(root.glob(f"*/weights/step-{step:06d}"))
        if not found:
            raise ConfigError(
                _WHERE,
                "step",
                f"{run} has no checkpoint of step {step}.",
                f"choose one of the saved steps {_saved_steps(root) or '(none)'}.",
            )
        return _checkpoint_at(_newest(found), f"{label} (step {step})", "")
    if name is not None:
        found = sorted(path for path in root.glob(f"*/*/{name}") if (path / META_FILE).is_file())
        if not found:
            raise ConfigError(
                _WHERE,
                "name",
                f"{run} has no checkpoint named {name!r}.",
                f"choose one of {_saved_names(root) or '(none)'}, or --step N.",
            )
        return _checkpoint_at(_newest(found), f"{label} ({name})", "")
    state = read_state(run)
    if state is None:
        raise ConfigError(
            _WHERE,
            "source",
            f"{run}: no {STATE_FILE}, so no latest checkpoint is recorded.",
            f"choose one with --step N (saved steps: {_saved_steps(root) or 'none'}) or --name NAME.",
        )
    if state.checkpoint.startswith(_TINKER):  # a run on a Tinker server: its latest checkpoint is downloaded
        return _downloaded(state.checkpoint, f"{label} ({state.checkpoint})", None)
    if not state.checkpoint.startswith(SCHEME):
        raise ConfigError(
            _WHERE,
            "source",
            f"{run}: its latest checkpoint is {state.checkpoint!r}, neither a local:// nor a tinker:// path.",
            "pass the checkpoint folder instead.",
        )
    parsed = LocalPath.parse(state.checkpoint)
    return _checkpoint_at(parsed.directory(root), f"{label} ({state.checkpoint})", "")


def _downloaded(path: str, label: str, options: DownloadOptions | None) -> ExportSource:
    """Download ``path`` (see :class:`DownloadOptions`) and read it as a local checkpoint."""
    from tinkerflow.shell.backends.local.embedded import cache_root
    from tinkerflow.shell.export.download import download_checkpoint

    chosen = options or _DOWNLOAD.get() or DownloadOptions()
    temp: pathlib.Path | None = None
    if chosen.keep is not None:
        folder = chosen.keep
    else:
        root = cache_root() / DOWNLOADS_SUBDIR
        root.mkdir(parents=True, exist_ok=True)
        temp = pathlib.Path(tempfile.mkdtemp(prefix="export-", dir=root))
        folder = temp / "checkpoint"
    try:
        download_checkpoint(path, folder, base_url=chosen.base_url, api_key=chosen.api_key, progress=chosen.progress)
        source = _checkpoint_at(
            folder,
            label,
            f"the download of {path} holds no {META_FILE}: a Tinker service export in PEFT's layout, which "
            "export cannot read yet (load it with peft directly: `tinker checkpoint download`).",
        )
    except BaseException:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if temp is not None:  # the temporary download lives as long as the source (and at most until exit)
        weakref.finalize(source, shutil.rmtree, temp, ignore_errors=True)
    return source


def _newest(paths: list[pathlib.Path]) -> pathlib.Path:
    """The most recently written of several candidates (a run resumed after a kill can hold one name twice)."""
    return max(paths, key=lambda path: ((path / META_FILE).stat().st_mtime_ns, str(path)))


def _saved_steps(root: pathlib.Path) -> list[int]:
    steps = set()
    for path in root.glob("*/weights/step-*"):
        match = _STEP_NAME.fullmatch(path.name)
        if match and (path / META_FILE).is_file():
            steps.add(int(match.group(1)))
    return sorted(steps)


def _saved_names(root: pathlib.Path) -> list[str]:
    return sorted({path.parent.name for path in root.glob(f"*/*/*/{META_FILE}")})
