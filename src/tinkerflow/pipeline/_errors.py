"""The errors of composing and running stages (private; re-exported by ``tinkerflow.pipeline``). Pure.

:class:`CompositionError` is raised when stages are joined and their types do not fit; :class:`StageError` when a
run's stage raises on an item. A :class:`StageError` keeps its cause as text (type, message, traceback) so that it
crosses process boundaries unchanged: a run in worker processes raises the same error as a run in this process.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Literal, TypeAlias

from tinkerflow.errors import ConfigError, TinkerflowError

__all__ = ["CompositionError", "ErrorPolicy", "StageError", "describe_cause", "format_details"]

ErrorPolicy: TypeAlias = Literal["raise", "skip"]
"""What a run does when a stage raises on an item: ``"raise"`` a :class:`StageError`, or ``"skip"`` the item
(all of its outputs) and count it."""


class CompositionError(ConfigError):
    """Two stages do not fit: the output type of one does not feed the input type of the next.

    ``where`` is ``"compose"`` (or ``"Pipeline.then"``), ``field`` names the joint (``"steps[1] -> steps[2]"``),
    and the message names both stages and both types.
    """


class StageError(TinkerflowError, RuntimeError):
    """A stage raised on an item. Names the stage, the item's source position and the cause.

    Attributes:
        stage: the failing step's name (``"source"`` when reading the item failed).
        location: where the item comes from: ``"data/train.jsonl:13"`` (file and line) or ``"items[12]"``.
        cause: ``"ValueError: ..."``, the type and message of the exception the stage raised.
        epoch, position: the run's epoch and the item's position in that epoch's order (``None`` outside runs).
        details: the cause's formatted traceback (kept as text so it survives worker processes).
    """

    stage: str
    location: str
    cause: str
    epoch: int | None
    position: int | None
    details: str

    def __init__(
        self,
        stage: str,
        location: str,
        cause: str,
        *,
        epoch: int | None = None,
        position: int | None = None,
        details: str = "",
    ) -> None:
        self.stage = stage
        self.location = location
        self.cause = cause
        self.epoch = epoch
        self.position = position
        self.details = details
        where = f" (epoch {epoch}, position {position})" if epoch is not None and position is not None else ""
        super().__init__(f"stage {stage!r} failed on {location}{where}: {cause}. Fix: {self.fix}")

    @property
    def where(self) -> str:
        return f"stage {self.stage!r}"

    @property
    def field(self) -> str:
        return self.location

    @property
    def problem(self) -> str:
        return self.cause

    @property
    def fix(self) -> str:
        return (
            "correct that item or the stage, or run the pipeline with .on_error('skip') to skip such items and "
            "count them."
        )

    def __reduce__(self) -> tuple[Callable[..., StageError], tuple[object, ...]]:
        return (_rebuild_stage_error, (self.stage, self.location, self.cause, self.epoch, self.position, self.details))


def _rebuild_stage_error(
    stage: str, location: str, cause: str, epoch: int | None, position: int | None, details: str
) -> StageError:
    return StageError(stage, location, cause, epoch=epoch, position=position, details=details)


def describe_cause(cause: BaseException) -> str:
    """``"ValueError: message"`` (the first line of the message, at most 300 characters)."""
    message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


def format_details(cause: BaseException) -> str:
    """The cause's traceback, formatted as text."""
    return "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
