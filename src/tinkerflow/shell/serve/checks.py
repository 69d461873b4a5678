"""Checks and conversions of SDK request fields into what the local backend takes. (Shell: imports tinker.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from tinkerflow import interop
from tinkerflow.errors import TinkerflowError
from tinkerflow.losses import BUILTIN_LOSSES, LossFnType
from tinkerflow.shell.serve.errors import ServeError

if TYPE_CHECKING:
    import tinker.types as tt

    from tinkerflow.datum import Datum

__all__ = ["LOCAL_LOSSES", "builtin_loss", "float_config", "sdk_datums"]


#: The losses the local backend computes (stable_reinforce is refused: its formula is not published).
LOCAL_LOSSES: Final[tuple[LossFnType, ...]] = tuple(loss for loss in BUILTIN_LOSSES if loss != "stable_reinforce")


def builtin_loss(name: str) -> LossFnType:
    for loss in LOCAL_LOSSES:
        if loss == name:
            return loss
    raise ServeError(
        400,
        "loss_fn",
        f"loss {name!r} is not implemented by the local backend; it implements {list(LOCAL_LOSSES)} "
        "(forward_backward_custom runs client-side on top of them).",
    )


def float_config(config: Mapping[str, float | str] | None) -> dict[str, float] | None:
    if config is None:
        return None
    out: dict[str, float] = {}
    for key, value in config.items():
        if isinstance(value, str):
            raise ServeError(400, f"loss_fn_config[{key!r}]", f"expected a number, got the string {value!r}.")
        out[key] = float(value)
    return out


def sdk_datums(data: Sequence[tt.Datum]) -> list[Datum]:
    out = []
    for index, datum in enumerate(data):
        try:
            out.append(interop.datum_from_tinker(datum))
        except TinkerflowError as error:
            raise ServeError(400, f"data[{index}]", str(error)) from error
    return out
