"""Request bodies: read with a size limit, parsed into the SDK's own pydantic types. (Shell.)"""

from __future__ import annotations

from typing import TypeVar

import pydantic
from fastapi import Request

from tinkerflow.shell.serve.errors import ServeError

__all__ = ["parse", "read_body"]

M = TypeVar("M", bound=pydantic.BaseModel)


def _pydantic_message(error: pydantic.ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "body"
    return field, f"{first.get('msg', 'invalid value')} ({error.error_count()} problem(s) in the body)"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(413, "body", f"{declared} bytes is over this server's limit of {limit} (--max-body-mb).")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(413, "body", f"the body is over this server's limit of {limit} bytes (--max-body-mb).")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, model: type[M], limit: int) -> M:
    """The body as the SDK type ``model``; 400 naming the first bad field."""
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body or b"{}")
    except pydantic.ValidationError as error:
        field, message = _pydantic_message(error)
        raise ServeError(400, field, message) from error
