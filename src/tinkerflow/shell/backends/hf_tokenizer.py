"""A transformers tokenizer behind the core :class:`~tinkerflow.tokenizers.Tokenizer` protocol. (Shell.)

The Tinker SDK's ``get_tokenizer()`` and the local backend's pretrained models give transformers tokenizers;
:class:`HFTokenizer` makes them behave as the protocol says: ``encode`` adds no BOS/EOS and encodes text that
spells a control token (``"<|im_end|>"``) as the plain text it is (``split_special_tokens``), so message content
can never forge a turn; control tokens are written by id (:meth:`HFTokenizer.token_id`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tinkerflow.tokenizers import TokenizerError

if TYPE_CHECKING:
    from tinkerflow.tokenizers import Tokenizer

__all__ = ["HFTokenizer"]


class HFTokenizer:
    """A transformers tokenizer (or anything with its ``encode``/``decode``/``__len__``) as a core ``Tokenizer``."""

    def __init__(self, tokenizer: object, name: str) -> None:
        self._tokenizer: Any = tokenizer  # a transformers tokenizer, used duck-typed
        self._name = name
        # transformers tokenizers can encode control-token spellings as plain text; minimal stand-ins cannot
        self._split: dict[str, bool] = (
            {"split_special_tokens": True} if hasattr(tokenizer, "split_special_tokens") else {}
        )

    @property
    def hf(self) -> object:
        """The wrapped transformers tokenizer (for chat templates and the like)."""
        return self._tokenizer

    @property
    def name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (special and added tokens included)."""
        return len(self._tokenizer)

    @property
    def bos_token_id(self) -> int | None:
        return self._optional_id("bos_token_id")

    @property
    def eos_token_id(self) -> int | None:
        return self._optional_id("eos_token_id")

    @property
    def added_tokens(self) -> Mapping[str, int]:
        """Text -> id of every added token (special or not)."""
        added = getattr(self._tokenizer, "get_added_vocab", None)
        return {str(text): int(index) for text, index in added().items()} if callable(added) else {}

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids: no BOS/EOS, control-token spellings encoded as plain text."""
        encoded = self._tokenizer.encode(text, add_special_tokens=False, **self._split)
        return [int(token) for token in encoded]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts."""
        return [self.encode(text) for text in texts]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        """Ids to text; control tokens are spelled out, nothing is skipped."""
        ids = [int(token) for token in tokens]
        return str(self._tokenizer.decode(ids, skip_special_tokens=False))

    def token_id(self, token: str) -> int:
        """The id of one vocabulary or added token given its exact text; :class:`TokenizerError` otherwise."""
        convert = getattr(self._tokenizer, "convert_tokens_to_ids", None)
        back = getattr(self._tokenizer, "convert_ids_to_tokens", None)
        index = convert(token) if callable(convert) else None
        if index is None or not callable(back) or back(int(index)) != token:
            raise TokenizerError(
                f"Tokenizer[{self._name}]",
                "token",
                f"{token!r} is not a single token of this vocabulary.",
                "check the token text (control tokens are spelled exactly, e.g. '<|im_end|>').",
            )
        return int(index)

    def _optional_id(self, attribute: str) -> int | None:
        value = getattr(self._tokenizer, attribute, None)
        return None if value is None else int(value)


if TYPE_CHECKING:  # the type checker verifies that HFTokenizer implements the protocol

    def _conforms(tokenizer: HFTokenizer) -> Tokenizer:
        return tokenizer
