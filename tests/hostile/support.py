"""What the hostile suite's cases share: the exact-typed-error assertion and the in-process command line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from tinkerflow.cli import main
from tinkerflow.errors import TinkerflowError, ValidationError


def raises_exactly(
    thunk: Callable[[], object], kind: type[Exception], field: str, where: str | None = None
) -> Exception:
    """``thunk()`` raises an error of exactly the class ``kind`` (a :class:`ValidationError`) naming ``field`` (and
    ``where`` when given), with a message that says ``<where>.<field>: ...``."""
    with pytest.raises(TinkerflowError) as info:
        thunk()
    error = info.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert isinstance(error, ValidationError), error
    assert error.field == field, str(error)
    if where is not None:
        assert error.where == where, str(error)
    assert f"{error.where}.{field}: " in str(error), str(error)
    return error


def run_cli(capsys: pytest.CaptureFixture[str], arguments: Sequence[str]) -> tuple[int, str, str]:
    """``tinkerflow ARGUMENTS`` in this process: the exit status (argparse's ``SystemExit`` included), what it
    printed on stdout and on stderr."""
    try:
        status = main(list(arguments))
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_cli_error(
    capsys: pytest.CaptureFixture[str], arguments: Sequence[str], message: str, *, status: int = 2
) -> str:
    """``tinkerflow ARGUMENTS`` exits with ``status``, its stderr holds ``message`` and no traceback; stderr."""
    code, _, err = run_cli(capsys, arguments)
    assert code == status, err
    assert message in err, err
    assert "Traceback" not in err, err
    return err
