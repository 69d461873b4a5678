"""Built-in stages and helpers over ``Datum`` (private; re-exported by ``tinkerflow.pipeline``). Pure.

The library's own pure functions are stages as they are: a renderer's ``render``, ``supervised_datum``-style
constructors, RL advantage and datum assembly, preference pairing take one item (bind their other arguments
with ``functools.partial``) and become stages by being passed to ``compose`` / ``Pipeline.then``. Only what has
no function elsewhere lives here: a length filter and the length used by token-budget batching.
"""

from __future__ import annotations

import attrs

from tinkerflow._validate import require_type
from tinkerflow.datum import Datum
from tinkerflow.errors import ConfigError
from tinkerflow.pipeline._stage import Stage, filter_stage

__all__ = ["LengthBounds", "datum_length", "length_filter"]


def datum_length(datum: Datum) -> int:
    """The number of model-input positions of a datum (``Datum.length``): its cost in a token budget."""
    return datum.length


@attrs.frozen
class LengthBounds:
    """A predicate: ``min_tokens <= datum.length <= max_tokens`` (``max_tokens=None``: no upper bound)."""

    min_tokens: int = 0
    max_tokens: int | None = None

    def __attrs_post_init__(self) -> None:
        require_type(self.min_tokens, int, "length_filter", "min_tokens")
        if self.min_tokens < 0:
            raise ConfigError("length_filter", "min_tokens", f"must be >= 0, got {self.min_tokens}.")
        if self.max_tokens is not None:
            require_type(self.max_tokens, int, "length_filter", "max_tokens")
            if self.max_tokens < self.min_tokens:
                raise ConfigError(
                    "length_filter",
                    "max_tokens",
                    f"is {self.max_tokens}, below min_tokens {self.min_tokens}.",
                    "keep max_tokens >= min_tokens.",
                )

    def __call__(self, datum: Datum) -> bool:
        length = datum.length
        return length >= self.min_tokens and (self.max_tokens is None or length <= self.max_tokens)


def length_filter(*, max_tokens: int | None = None, min_tokens: int = 0) -> Stage[Datum, Datum]:
    """A filter stage keeping datums with ``min_tokens <= length <= max_tokens`` (model-input positions)."""
    bounds = LengthBounds(min_tokens, max_tokens)
    upper = "inf" if max_tokens is None else str(max_tokens)
    return filter_stage(bounds, name=f"length_filter({min_tokens}..{upper})")
