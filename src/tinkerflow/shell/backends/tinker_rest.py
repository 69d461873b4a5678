"""The Tinker service's REST calls that retention needs (shell): delete and list a run's checkpoints through the
SDK's ``RestClient``, each bounded by the backend's :class:`~tinkerflow.shell.backends.tinker_bounds.CallWatch`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol, TypeVar, cast

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.tinker_bounds import _WHERE, CallWatch, TinkerServiceError, blocking

__all__ = ["RestClient", "delete_checkpoint", "list_checkpoints", "rest_client_for"]

U_co = TypeVar("U_co", covariant=True)


class _Checkpoint(Protocol):
    @property
    def tinker_path(self) -> str: ...


class _CheckpointList(Protocol):
    @property
    def checkpoints(self) -> Sequence[_Checkpoint]: ...


class _RestCall(Protocol[U_co]):
    def result(self) -> U_co: ...


class RestClient(Protocol):
    """The part of the SDK's ``RestClient`` retention uses."""

    def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> _RestCall[object]: ...
    def list_checkpoints(self, training_run_id: str) -> _RestCall[_CheckpointList]: ...


def rest_client_for(watch: CallWatch, service: object | None, base_url: str | None, api_key: str | None) -> RestClient:
    """An SDK ``RestClient``: from a given ``ServiceClient`` (``service``; a ``ConfigError`` when a stand-in cannot
    make one), else ``RestClient(base_url, api_key)``; made on a daemon thread, bounded by ``watch``."""
    if service is None:

        def make() -> object:
            import tinker

            return tinker.RestClient(base_url=base_url, api_key=api_key)

    else:
        factory = getattr(service, "create_rest_client", None)
        if not callable(factory):
            raise ConfigError(
                _WHERE, "rest_client", "the given service_client cannot make a RestClient (to delete checkpoints).",
                "pass rest_client=tinker.RestClient(base_url=..., api_key=...) too.",
            )  # fmt: skip

        def make() -> object:
            with warnings.catch_warnings():  # deprecated for RestClient(...), which needs the URL and key again
                warnings.simplefilter("ignore", FutureWarning)
                return factory()

    return cast("RestClient", blocking(watch, "RestClient", make))  # the SDK's RestClient is untyped


def _status_error(error: BaseException, what: str, url: str) -> TinkerServiceError:
    status, message = getattr(error, "status_code", "?"), getattr(error, "message", str(error))
    typed = TinkerServiceError(
        f"{what}: the Tinker service at {url} answered HTTP {status} ({message}). Fix: check the path and the "
        "service; a run resumes from its last checkpoint."
    )
    typed.__cause__ = error
    return typed


def delete_checkpoint(rest: RestClient, watch: CallWatch, path: str) -> bool:
    """``rest.delete_checkpoint_from_tinker_path(path)``, bounded by ``watch``: ``True`` once deleted, ``False``
    when the service has no such checkpoint (HTTP 404); another HTTP error is a :class:`TinkerServiceError`."""
    import tinker

    what = f"delete_checkpoint({path!r})"
    try:
        blocking(watch, what, lambda: rest.delete_checkpoint_from_tinker_path(path).result())
    except tinker.NotFoundError:
        return False
    except tinker.APIStatusError as error:
        raise _status_error(error, what, watch.base_url) from error
    return True


def list_checkpoints(rest: RestClient, watch: CallWatch, run_id: str) -> list[str]:
    """The ``tinker://`` paths of training run ``run_id``'s checkpoints, sorted (none when the service does not
    know the run), bounded by ``watch``; another HTTP error is a :class:`TinkerServiceError`."""
    import tinker

    what = f"list_checkpoints({run_id!r})"
    try:
        listed = blocking(watch, what, lambda: rest.list_checkpoints(run_id).result())
    except tinker.NotFoundError:
        return []
    except tinker.APIStatusError as error:
        raise _status_error(error, what, watch.base_url) from error
    return sorted(str(checkpoint.tinker_path) for checkpoint in listed.checkpoints)
