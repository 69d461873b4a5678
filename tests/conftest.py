"""Shared test configuration: hypothesis profiles, assertion rewriting in the shared helper modules, and the
``one_torch_thread`` fixture.

``ci`` (selected when CI=true or HYPOTHESIS_PROFILE=ci): derandomized with a fixed database-free seed, so a CI run
is reproducible; ``dev`` (default): random, with the example database, for finding new failures locally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

pytest.register_assert_rewrite("tests.helpers", "tests.tiny_model")

# The hostile suite's counts by boundary, printed at the end of a run (registered here so that the xdist
# controller of the default run loads it too).
pytest_plugins = ("tests.hostile.counting",)

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_default = "ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a whole module of tiny-model tests (``pytest.mark.usefixtures`` it)."""
    from tests.helpers import one_torch_thread as holding_one_thread

    with holding_one_thread():
        yield
