"""What a model card is made of, read from disk in one place: the export's ``export.json``, its run directory
(``config.json``, ``metrics.jsonl``), the data files the config names (hashed) and the base model's license.
(Shell.)

The run is ``--run`` when given; otherwise it is found from ``export.json``'s ``source``: a run directory (as
``tinkerflow export RUN`` records it, ``RUN (local://...)``) or a checkpoint folder inside a run's
``checkpoints/``. A ``local://`` or ``tinker://`` source names no run directory: pass ``--run``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Final, cast

from tinkerflow.config import HF_DISK_PREFIX, HF_PREFIX
from tinkerflow.errors import ConfigError
from tinkerflow.shell.io.run_dir import METRICS_FILE, MetricsLog
from tinkerflow.shell.publish.card import DataFile, ExportInfo

__all__ = ["EXPORT_FILE", "RUN_CONFIG", "data_files", "find_run", "read_export", "read_run", "resolve_data"]

#: The provenance file every export holds (``tinkerflow.shell.export.EXPORT_FILE``).
EXPORT_FILE: Final = "export.json"
#: A run directory's config (``tinkerflow.shell.io.run.CONFIG_FILE``).
RUN_CONFIG: Final = "config.json"
_WHERE: Final = "publish"
_SELECTOR: Final = re.compile(r"(?P<path>.*) \([^()]*\)")
#: Top-level config fields that name data sources (besides any other ``*_data`` field).
_DATA_FIELDS: Final = ("train_data", "test_data")
_EXPORT_HINT: Final = "export a checkpoint first: tinkerflow export CHECKPOINT --out DIR --format hf|peft|gguf."


def _json_object(path: pathlib.Path, field: str, what: str) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(_WHERE, field, f"{path}: unreadable {what} ({error}).", "restore the file.") from error
    if not isinstance(data, dict):
        raise ConfigError(_WHERE, field, f"{path}: {what} is not a JSON object.", "restore the file.")
    return cast("dict[str, object]", data)


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_export(folder: pathlib.Path) -> ExportInfo:
    """The ``export.json`` of ``folder``.

    Raises:
        ConfigError: on ``publish.folder``: no such folder, or not an export (no or a broken ``export.json``).
    """
    if not folder.is_dir():
        raise ConfigError(_WHERE, "folder", f"{folder} does not exist or is not a folder.", _EXPORT_HINT)
    if not (folder / EXPORT_FILE).is_file():
        raise ConfigError(_WHERE, "folder", f"{folder} is not a tinkerflow export (no {EXPORT_FILE}).", _EXPORT_HINT)
    record = _json_object(folder / EXPORT_FILE, "folder", EXPORT_FILE)
    fmt, base = record.get("format"), record.get("base_model")
    if not isinstance(fmt, str) or not isinstance(base, str):
        raise ConfigError(
            _WHERE, "folder", f"{folder / EXPORT_FILE} names no format or base model.", f"re-export: {_EXPORT_HINT}"
        )
    source = record.get("source")
    return ExportInfo(
        format=fmt,
        source=source if isinstance(source, str) else "",
        base_model=base,
        lora_rank=_optional_int(record.get("lora_rank")),
        optimizer_steps=_optional_int(record.get("optimizer_steps")),
        record=record,
    )


def _is_run(folder: pathlib.Path) -> bool:
    return (folder / RUN_CONFIG).is_file() and ((folder / METRICS_FILE).is_file() or (folder / "state.json").is_file())


def _run_above(checkpoint: pathlib.Path) -> pathlib.Path | None:
    """The run directory holding ``checkpoint`` in its ``checkpoints/`` folder, if any."""
    for parent in checkpoint.resolve().parents:
        if parent.name == "checkpoints" and _is_run(parent.parent):
            return parent.parent
    return None


def find_run(export: ExportInfo, run_dir: pathlib.Path | None) -> pathlib.Path | None:
    """The run directory of the export: ``run_dir`` when given, else the one its source names (``None`` when the
    source names none that exists here).

    Raises:
        ConfigError: on ``publish.run``: ``run_dir`` is not a run directory.
    """
    if run_dir is not None:
        if not _is_run(run_dir):
            raise ConfigError(
                _WHERE,
                "run",
                f"{run_dir} is not a run directory (no {RUN_CONFIG} with {METRICS_FILE} or state.json).",
                "pass the run_dir of the tinkerflow sl|dpo|rl run that made the checkpoint.",
            )
        return run_dir
    text = export.source
    candidates = [text]
    match = _SELECTOR.fullmatch(text)
    if match:
        candidates.append(match.group("path"))
    for candidate in candidates:
        if not candidate or "://" in candidate:
            continue
        path = pathlib.Path(candidate).expanduser()
        if path.is_dir() and _is_run(path):
            return path
        if (path / "checkpoint.json").is_file():
            found = _run_above(path)
            if found is not None:
                return found
    return None


def read_run(run_dir: pathlib.Path) -> tuple[dict[str, object], tuple[Mapping[str, object], ...]]:
    """The run's config and its metrics rows (a torn last row is left out)."""
    config = _json_object(run_dir / RUN_CONFIG, "run", RUN_CONFIG)
    return config, tuple(MetricsLog.read(run_dir / METRICS_FILE))


def _training_cwd(run_dir: pathlib.Path, config: Mapping[str, object]) -> pathlib.Path | None:
    """The folder the run was started from, when the config's relative ``run_dir`` says it (``runs/x`` found at
    ``/home/me/runs/x`` was started in ``/home/me``)."""
    named = config.get("run_dir")
    if not isinstance(named, str) or pathlib.Path(named).is_absolute():
        return None
    parts = pathlib.Path(os.path.normpath(named)).parts
    actual = run_dir.resolve()
    if parts and actual.parts[-len(parts) :] == parts:
        return pathlib.Path(*actual.parts[: -len(parts)])
    return None


def resolve_data(source: str, run_dir: pathlib.Path | None, config: Mapping[str, object]) -> pathlib.Path | None:
    """Where the data file ``source`` of a run's config is now: as an absolute path, else relative to the folder the
    run was started from (see :func:`_training_cwd`), else relative to the current folder; ``None`` if nowhere."""
    path = pathlib.Path(source).expanduser()
    if path.is_absolute():
        return path if path.exists() else None
    bases = [_training_cwd(run_dir, config) if run_dir is not None else None, pathlib.Path.cwd()]
    for base in bases:
        if base is not None and (base / path).exists():
            return base / path
    return None


def _hash_file(path: pathlib.Path) -> tuple[str, int, int]:
    """sha256, non-blank lines and bytes of a file, read once."""
    digest = hashlib.sha256()
    rows = size = 0
    with open(path, "rb") as handle:
        for line in handle:
            digest.update(line)
            size += len(line)
            rows += bool(line.strip())
    return digest.hexdigest(), rows, size


def _data_fields(config: Mapping[str, object]) -> list[str]:
    extra = sorted(key for key in config if key.endswith("_data") and key not in _DATA_FIELDS)
    return [key for key in (*_DATA_FIELDS, *extra) if isinstance(config.get(key), str)]


def data_files(config: Mapping[str, object], run_dir: pathlib.Path | None) -> tuple[DataFile, ...]:
    """The data sources the config names (``train_data``, ``test_data``, other ``*_data`` fields): files hashed
    (sha256, non-blank lines, bytes); hub datasets, folders and files that no longer exist listed by name."""
    found = []
    for field in _data_fields(config):
        source = cast("str", config[field])
        if source.startswith(HF_PREFIX):
            found.append(DataFile(field, source, "hub"))
            continue
        local = source.removeprefix(HF_DISK_PREFIX)
        path = resolve_data(local, run_dir, config)
        if path is None:
            found.append(DataFile(field, source, "missing"))
        elif path.is_dir() or source.startswith(HF_DISK_PREFIX):
            found.append(DataFile(field, source, "folder", path=str(path)))
        else:
            sha256, rows, size = _hash_file(path)
            found.append(DataFile(field, source, "file", path=str(path), sha256=sha256, rows=rows, size=size))
    return tuple(found)
