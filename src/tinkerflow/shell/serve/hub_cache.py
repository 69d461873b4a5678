"""Make ``AutoTokenizer.from_pretrained(<served name>)`` work offline for the server's models. (Shell.)

SDK and cookbook code gets its tokenizer from the Hugging Face hub by the model's name
(``tinker_cookbook.tokenizer_utils.get_tokenizer(name)``, ``TrainingClient.get_tokenizer()``). With no hub, the
same call succeeds when the tokenizer sits in the hub's local cache under that name and ``HF_HUB_OFFLINE=1`` is set.
:func:`install_tokenizers` writes each served model's own tokenizer there, in the cache layout
(``<hf_home>/hub/models--<org>--<name>/snapshots/<revision>/`` plus ``refs/main``), with an empty ``config.json``
(transformers reads one before the tokenizer). Point ``HF_HOME`` at ``hf_home`` before Python imports
``huggingface_hub`` (the variables are read once, at import).

The tiny test models' byte tokenizer becomes an equivalent ``tokenizers`` BPE with no merges over the 256 byte
symbols, its control tokens registered as special tokens. One difference: the byte tokenizer encodes the *text*
``<|eos|>`` as seven bytes, the installed tokenizer as the one special id (renderers never put such text in
content, so rendered ids agree).

A name with ``:`` is not installed (the cookbook cuts names at ``:``); nor is a name whose cache entry already
exists and was not written by tinkerflow, so a real download is never replaced.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
from tinkerflow.shell.backends.local.checkpoint import atomic_directory
from tinkerflow.shell.backends.local.models import ByteTokenizer, byte_tokenizer_as_hf

if TYPE_CHECKING:
    from tinkerflow.tokenizers import Tokenizer

__all__ = ["REVISION", "install_tokenizers"]

#: The snapshot name tinkerflow writes (any 40-character string serves; this one marks our entries).
REVISION: Final = "7f1c0ca1" + "0" * 32
_MARKER: Final = "tinkerflow-installed.json"


def _hf_of(tokenizer: Tokenizer) -> object | None:
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.hf
    if isinstance(tokenizer, ByteTokenizer):
        return byte_tokenizer_as_hf(tokenizer)
    return None


def _entry(hf_home: pathlib.Path, name: str) -> pathlib.Path:
    return hf_home / "hub" / ("models--" + name.replace("/", "--"))


def install_tokenizers(tokenizers: Mapping[str, Tokenizer], hf_home: str | pathlib.Path) -> dict[str, str]:
    """Write each ``name -> tokenizer`` into the hub cache under ``hf_home``; returns ``name -> what happened``
    (``"installed"``, or why it was skipped). Safe to run again: tinkerflow's own entries are rewritten."""
    home = pathlib.Path(hf_home)
    outcome: dict[str, str] = {}
    for name, tokenizer in sorted(tokenizers.items()):
        entry = _entry(home, name)
        if ":" in name:
            outcome[name] = "skipped: the cookbook cuts names at ':'"
            continue
        if entry.exists() and not (entry / _MARKER).exists():
            outcome[name] = f"skipped: {entry} exists and is not tinkerflow's"
            continue
        hf = _hf_of(tokenizer)
        if hf is None:
            outcome[name] = f"skipped: {type(tokenizer).__name__} has no transformers form"
            continue
        shutil.rmtree(entry, ignore_errors=True)
        (entry / "refs").mkdir(parents=True)
        (entry / _MARKER).write_text(json.dumps({"name": name, "source": tokenizer.name}), encoding="utf-8")
        with atomic_directory(entry / "snapshots" / REVISION) as folder:
            hf.save_pretrained(folder)  # type: ignore[attr-defined]  # a transformers tokenizer
            (folder / "config.json").write_text("{}", encoding="utf-8")
        (entry / "refs" / "main").write_text(REVISION, encoding="utf-8")
        outcome[name] = "installed"
    return outcome
