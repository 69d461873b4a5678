"""Control-token spellings in template and prefill text: where a tokenizer's added tokens are spelled, and text
split at them.

Message content is always encoded as plain text (content can never forge a control token); these functions are
for the two kinds of text that *stand for* control tokens: a family's own template text (:func:`split_control`)
and a prefill the model is asked to continue (:func:`encode_control_text`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tinkerflow.tokenizers import Tokenizer

__all__ = ["control_pattern", "control_runs", "encode_control_text", "split_control"]


def control_pattern(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """A regex matching the spelling of any added token of ``tokenizer`` (longest first), or ``None``."""
    added = tokenizer.added_tokens
    if not added:
        return None
    return re.compile("|".join(re.escape(token) for token in sorted(added, key=len, reverse=True)))


def control_runs(tokenizer: Tokenizer, text: str, pattern: re.Pattern[str]) -> Iterator[str | int]:
    """``text`` in order as non-empty runs of plain text and the ids of the added tokens spelled in it."""
    added = tokenizer.added_tokens
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            yield text[position : match.start()]
        yield added[match.group(0)]
        position = match.end()
    if position < len(text):
        yield text[position:]


def encode_control_text(tokenizer: Tokenizer, text: str, pattern: re.Pattern[str] | None = None) -> list[int]:
    """Encode model-output text in which control-token spellings *are* control tokens (prefills).

    Added tokens (``"<think>"``, ``"<|im_end|>"``) become their ids; the text between them is encoded as plain
    text. This is how Hugging Face tokenizers encode a string; use it only for text that stands for tokens the
    model itself produces, never for message content. ``pattern`` is :func:`control_pattern` of the tokenizer
    (computed when not given).
    """
    if pattern is None:
        pattern = control_pattern(tokenizer)
    if pattern is None or pattern.search(text) is None:
        return tokenizer.encode(text)
    result: list[int] = []
    for run in control_runs(tokenizer, text, pattern):
        if isinstance(run, int):
            result.append(run)
        else:
            result.extend(tokenizer.encode(run))
    return result


def split_control(tokenizer: Tokenizer, text: str) -> tuple[str | int, ...]:
    """Template text as pieces: spellings of added tokens become their ids, the rest stays text."""
    pattern = control_pattern(tokenizer)
    if pattern is None or pattern.search(text) is None:
        return (text,) if text else ()
    return tuple(control_runs(tokenizer, text, pattern))
