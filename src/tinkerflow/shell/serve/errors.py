"""The server's one error: an HTTP status, the request field at fault and a message naming the fix. (Shell.)"""

from __future__ import annotations

from tinkerflow.errors import TinkerflowError

__all__ = ["ServeError"]


class ServeError(TinkerflowError):
    """A request the server answers with ``status`` (4xx: the client's to fix; 5xx: the server's).

    Attributes:
        status: the HTTP status code.
        field: the request field (or part of the server) at fault, e.g. ``"loss_fn"`` or ``"model_id"``.
        message: what was wrong and how to fix it.
    """

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message
