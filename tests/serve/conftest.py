"""Shared fixtures of the ``tinkerflow serve`` tests.

* ``server``: a :class:`~tinkerflow.shell.serve.server.ServerThread` on ``127.0.0.1`` and a free port, over a fresh
  store in a temporary folder, on the CPU; one per test module (stopped when the module ends).
* ``service_client``: an unmodified ``tinker.ServiceClient`` pointed at ``server`` with its key (module scope;
  its session is closed at teardown).
* ``no_telemetry`` (autouse, module scope): ``TINKER_TELEMETRY=0``, so the SDK sends no telemetry events.

A module needing a server with other settings (a small ``max_pending``, ``max_body_mb``) starts its own with
``ServerThread(ServerConfig(...))`` in a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import tinker

    from tinkerflow.shell.serve.server import ServerThread


@pytest.fixture(scope="module", autouse=True)
def no_telemetry() -> Iterator[None]:
    """The SDK sends no telemetry (module scope, so module-scoped clients are made with it off too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINKER_TELEMETRY", "0")
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, no_telemetry: None) -> Iterator[ServerThread]:
    """A running server over a fresh store (``server.config.store``), on the CPU, for the whole module."""
    pytest.importorskip("torch")
    from tinkerflow.shell.serve.server import ServerConfig, ServerThread

    with ServerThread(ServerConfig(store=tmp_path_factory.mktemp("serve") / "store", device="cpu")) as running:
        yield running


@pytest.fixture(scope="module")
def service_client(server: ServerThread) -> Iterator[tinker.ServiceClient]:
    """The SDK's ``ServiceClient`` on ``server`` (closed, with status ``success``, when the module ends)."""
    import tinker

    client = tinker.ServiceClient(base_url=server.base_url, api_key=server.config.api_key)
    try:
        yield client
    finally:
        client.close("success").result(timeout=30)
