"""Token-level parsing support (private): split sampled tokens at control-token ids, decoding the text between.

Parsers work on these segments, so only a real control token (never text that merely spells one) can open a
thinking block or a tool call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence

__all__ = ["Segment", "blocks", "find", "segments", "spell"]

Segment = int | str
"""A control-token id, or the decoded text of a run of ordinary tokens."""


def segments(tokens: Sequence[int], control: Collection[int], decode: Callable[[list[int]], str]) -> list[Segment]:
    """``tokens`` as alternating control ids and decoded text runs (empty runs omitted)."""
    result: list[Segment] = []
    run: list[int] = []
    for token in tokens:
        if token in control:
            if run:
                result.append(decode(run))
                run = []
            result.append(token)
        else:
            run.append(token)
    if run:
        result.append(decode(run))
    return result


def find(items: Sequence[Segment], target: int, start: int = 0) -> int:
    """Index of the first control id ``target`` at or after ``start``, or -1."""
    for index in range(start, len(items)):
        if items[index] == target and type(items[index]) is int:
            return index
    return -1


def spell(items: Sequence[Segment], names: dict[int, str]) -> str:
    """Segments back to text, control ids spelled with ``names``."""
    return "".join(item if isinstance(item, str) else names[item] for item in items)


def blocks(items: Sequence[Segment], opener: int, closer: int) -> Iterator[Segment | list[Segment]]:
    """``items`` in order, each block from control id ``opener`` to the first ``closer`` after it given as the
    list of the segments inside it; an ``opener`` never closed stays an ordinary item."""
    index = 0
    while index < len(items):
        item = items[index]
        if item == opener and type(item) is int:
            closing = find(items, closer, index + 1)
            if closing >= 0:
                yield list(items[index + 1 : closing])
                index = closing + 1
                continue
        yield item
        index += 1
