"""One family of typed errors.

Every error tinkerflow raises on bad input derives from :class:`TinkerflowError`. Validation errors name the
record (or function), the field, what was wrong and how to fix it, so a user never has to read a traceback
from deep inside numpy or torch to learn which of their inputs was bad.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ConfigError",
    "DTypeError",
    "InteropError",
    "NonFiniteError",
    "SerializationError",
    "ShapeError",
    "TinkerflowError",
    "ValidationError",
]


class TinkerflowError(Exception):
    """Base class of every error tinkerflow raises on purpose."""


class ValidationError(TinkerflowError, ValueError):
    """A value does not satisfy a record's or a function's contract.

    Attributes:
        where: the record or function that rejected the value (``"Datum"``, ``"Message"``).
        field: the offending field, dotted for nested values (``"loss_inputs.weights"``, ``"messages[2].role"``).
        problem: what was wrong, in one sentence.
        fix: how to make it right, in one sentence (may be empty when obvious).
    """

    where: str
    field: str
    problem: str
    fix: str

    def __init__(self, where: str, field: str, problem: str, fix: str = "") -> None:
        self.where = where
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{where}.{field}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ValidationError], tuple[str, str, str, str]]:
        return (type(self), (self.where, self.field, self.problem, self.fix))


class ShapeError(ValidationError):
    """An array has the wrong number of dimensions or a length that disagrees with its siblings."""


class DTypeError(ValidationError):
    """An array has a dtype that cannot be converted safely to the one the field requires."""


class NonFiniteError(ValidationError):
    """A float array or scalar holds NaN or infinity where only finite values make sense."""


class ConfigError(ValidationError):
    """A configuration value is out of range or inconsistent with another."""


class SerializationError(TinkerflowError, ValueError):
    """JSON could not be turned into a record (or a record into JSON); the message names the path."""


class InteropError(TinkerflowError, ValueError):
    """A value from (or for) the ``tinker`` SDK has no exact tinkerflow counterpart."""


class ArgumentError(ValidationError, TypeError):
    """A checked function got an argument whose dtype or shape disagrees with its annotation."""
