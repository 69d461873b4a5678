"""Tokenizers (pure): a small protocol and one fast in-memory implementation.

Renderers take a tokenizer as an argument; nothing here is global. The protocol is what a renderer needs:

* ``encode(text)`` / ``encode_batch(texts)``: *ordinary* text to ids. No BOS/EOS is added, and text that spells a
  control token (``"<|im_end|>"``, ``"<|eot_id|>"``, ``"<think>"``, ``"<｜User｜>"``) is encoded as the plain text
  it is, never as the control token: message content can never forge a turn. Renderers write control tokens
  by id (``token_id``).
* ``decode(tokens)``: ids to text, control tokens spelled out (nothing skipped, no clean-up of spaces).
* ``token_id(text)``: the id of one vocabulary or added token (``"<|im_end|>"``), or a :class:`TokenizerError`.
* ``bos_token_id`` / ``eos_token_id`` and ``added_tokens`` (text -> id of every added/special token).

:class:`FastTokenizer` implements it over a Hugging Face ``tokenizers.Tokenizer`` (the Rust library: an in-memory
object), keeping two private copies: one with the added tokens (decode, look-ups) and one without them (ordinary
encoding). Build one from such an object or from ``tokenizer.json`` text (:meth:`FastTokenizer.from_json`); the
offline vocabularies are built from their source bytes by :mod:`tinkerflow.vocabularies`.

Loading from a folder, a file, the offline-vocabulary cache or the hub reads files and the environment, so it is
the shell's part: :func:`tinkerflow.shell.io.tokenizers.load_tokenizer` and
:func:`tinkerflow.shell.io.tokenizers.offline_tokenizer`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from tinkerflow.errors import ValidationError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["FastTokenizer", "Tokenizer", "TokenizerError"]


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
    def from_json(
        cls,
        text: str,
        *,
        name: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> FastTokenizer:
        """A tokenizer from ``tokenizer.json`` text (what :meth:`to_json` returns); the keywords as for the
        constructor. A text the Rust library cannot read is a :class:`TokenizerError`."""
        tokenizer = cls.__new__(cls)
        try:
            tokenizer._setup(text, name, bos_token, eos_token, chat_template)
        except TokenizerError:
            raise
        except Exception as error:  # the Rust library raises plain Exception for a malformed tokenizer.json
            raise TokenizerError(
                f"Tokenizer[{name}]", "tokenizer.json", f"cannot be read ({error}).", "pass a valid tokenizer.json."
            ) from error
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
        # each Rust encoding is freed right after its ids are read, not all of them at the end: the freeing
        # then no longer evicts the fresh id lists from the cache before the caller reads them (packing one
        # conversation took ~1.2 us less, about 0.5% of its tokenization; see docs/rendering.md)
        encodings.reverse()
        pop = encodings.pop
        return [pop().ids for _ in range(len(encodings))]

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
