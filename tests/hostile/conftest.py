"""The hostile suite's marker and its counts by boundary (:mod:`tests.hostile.counting`)."""

from __future__ import annotations

import pytest
from tests.hostile import counting


def pytest_configure(config: pytest.Config) -> None:
    counting.pytest_configure(config)
