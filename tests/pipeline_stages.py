"""Stage functions shared by the pipeline tests (module level, so worker processes can import them)."""

from __future__ import annotations

from collections.abc import Sequence


def add1(x: int) -> int:
    return x + 1


def not_div3(x: int) -> bool:
    return x % 3 != 0


def dup_even(x: int) -> list[int]:
    return [x, x + 1000] if x % 2 == 0 else [x]


def drop_div5(x: int) -> tuple[int, ...]:
    return () if x % 5 == 0 else (x,)


def vec_neg(xs: Sequence[int]) -> list[int]:
    return [-x for x in xs]
