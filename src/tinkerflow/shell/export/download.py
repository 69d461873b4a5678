"""Download a ``tinker://`` checkpoint into a local folder through the unmodified ``tinker`` SDK. (Shell.)

:func:`download_checkpoint` does what ``tinker checkpoint download`` does:

* ``tinker://<run>/external_weights/<name>`` is asked for directly;
* ``tinker://<run>/weights/<name>`` and ``.../sampler_weights/<name>`` are loaded into a new training run
  (``ServiceClient.create_training_client_from_state``), saved with ``save_weights_external`` (one hour TTL),
  downloaded, and that temporary export is deleted from the server (the new run's session is then closed);
* ``RestClient.get_external_weights_urls`` gives one URL per file, each fetched with a plain GET (no key: a URL's
  signature is its permission), with a progress bar per file.

The files are assembled in a temporary sibling of ``dest`` that is renamed into place only when every file is in and
checked (:func:`~tinkerflow.shell.backends.local.checkpoint.atomic_directory`): a relative path that would leave the
folder is refused, each file must have its ``Content-Length``, each ``*.safetensors`` must parse, and a
``checkpoint.json`` must name files that are there. Before the SDK is called, the server's ``/api/v1/healthz`` is
asked (5 s), so a wrong address or key fails in seconds rather than after the SDK's minutes of retries.

A checkpoint of ``tinkerflow serve`` downloads as a local checkpoint (``checkpoint.json`` and the adapter), which
``tinkerflow export`` reads like any checkpoint folder.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.checkpoint import (
    ADAPTER_FILE,
    FULL_FILE,
    META_FILE,
    OPTIMIZER_FILE,
    CheckpointError,
    CheckpointMeta,
    atomic_directory,
)

if TYPE_CHECKING:
    import httpx
    import tinker

__all__ = ["HEALTH_TIMEOUT_S", "TINKER_SCHEME", "TinkerPath", "check_reachable", "download_checkpoint"]

TINKER_SCHEME: Final = "tinker://"
#: Seconds the reachability check waits for ``/api/v1/healthz``.
HEALTH_TIMEOUT_S: Final = 5.0
#: Seconds a file download may stall (connect, or between two reads).
FILE_TIMEOUT_S: Final = 60.0
#: The TTL of the temporary external export of a ``weights`` / ``sampler_weights`` checkpoint.
EXPORT_TTL_S: Final = 3600
#: The name of that temporary export (under the new run, so concurrent downloads do not collide).
EXPORT_NAME: Final = "tinkerflow-download"
_KINDS: Final = ("weights", "sampler_weights", "external_weights")
_CHUNK: Final = 1 << 20
_RESIGN_MARGIN: Final = datetime.timedelta(minutes=5)
_WHERE: Final = "download"
_PATH_FIX: Final = "pass a path that save_state / save_weights_for_sampler / save_weights_external returned."


@attrs.frozen
class TinkerPath:
    """A parsed ``tinker://<run id>/<weights|sampler_weights|external_weights>/<name>``."""

    run_id: str
    kind: str
    name: str

    @classmethod
    def parse(cls, text: str, field: str = "tinker_path") -> TinkerPath:
        """Parse ``text``; :class:`ConfigError` on ``field`` for anything that is not such a path."""
        parts = text.removeprefix(TINKER_SCHEME).split("/") if text.startswith(TINKER_SCHEME) else []
        if len(parts) != 3 or parts[1] not in _KINDS or any(part in ("", ".", "..") for part in parts):
            raise ConfigError(
                _WHERE,
                field,
                f"{text!r} is not tinker://<run id>/<{'|'.join(_KINDS)}>/<name>.",
                _PATH_FIX,
            )
        return cls(run_id=parts[0], kind=parts[1], name=parts[2])

    def __str__(self) -> str:
        return f"{TINKER_SCHEME}{self.run_id}/{self.kind}/{self.name}"


def download_checkpoint(
    tinker_path: str,
    dest: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Download the checkpoint ``tinker_path`` into the folder ``dest``; returns ``dest``.

    Args:
        tinker_path: ``tinker://<run>/<weights|sampler_weights|external_weights>/<name>``.
        dest: the folder to write (must not exist unless ``overwrite``).
        base_url: the Tinker API (default ``$TINKER_BASE_URL``, else the Tinker service).
        api_key: the key (default ``$TINKER_API_KEY``, else the SDK's ``TINKER_CREDENTIAL_CMD`` or stored key).
        progress: draw a progress bar per file (stderr).
        overwrite: replace an existing ``dest``.

    Raises:
        ConfigError: a malformed path, no key, a server that does not answer or refuses the key, an unknown
            checkpoint, or an existing ``dest`` (each naming the field and the fix).
        CheckpointError: a download that failed, was cut short, or holds files that do not parse or are missing.
    """
    parsed = TinkerPath.parse(tinker_path)
    target = pathlib.Path(dest).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(_WHERE, "dest", f"{target} already exists.", "choose another folder or pass overwrite=True.")
    url = _base_url(base_url)
    key = _api_key(api_key)
    check_reachable(url, key)
    import tinker

    rest = tinker.RestClient(base_url=url, api_key=key)
    with atomic_directory(target, overwrite=overwrite) as temp, _sdk_errors(str(parsed), url):
        if parsed.kind == "external_weights":
            _fetch_external(rest, str(parsed), temp, progress, renew_ttl=False)
        else:
            _fetch_through_export(rest, url, key, str(parsed), temp, progress)
        verify_download(temp, str(parsed))
    return target


def _base_url(base_url: str | None) -> str:
    from tinker.lib.base_url import resolve_base_url

    return resolve_base_url(base_url)


def _api_key(api_key: str | None) -> str | None:
    """The key to send: the argument or ``$TINKER_API_KEY``; ``None`` when the SDK has another credential."""
    key = api_key or os.environ.get("TINKER_API_KEY") or None
    if key is not None:
        if not key.startswith(("tml-", "eyJ")):
            raise ConfigError(_WHERE, "api_key", "a Tinker key starts with 'tml-'.", "set TINKER_API_KEY to your key.")
        return key
    if os.environ.get("TINKER_CREDENTIAL_CMD") or _stored_key():
        return None
    raise ConfigError(
        _WHERE,
        "api_key",
        "no Tinker API key: TINKER_API_KEY is not set and no key is stored.",
        "set TINKER_API_KEY (for `tinkerflow serve`, the key it prints) or pass api_key.",
    )


def _stored_key() -> bool:
    """Whether ``tinker auth login`` stored a default key."""
    from tinker.lib import credentials

    try:
        store = credentials.JsonCredentialStore(credentials.default_credentials_path())
        return store.get_default_key() is not None
    except Exception:  # an unreadable store counts as none (the SDK then says why)
        return False


def check_reachable(base_url: str, api_key: str | None, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Ask ``<base_url>/api/v1/healthz`` within ``timeout`` seconds, with the key when there is one.

    Raises:
        ConfigError: on ``base_url`` when nothing answers there, on ``api_key`` when the server refuses the key.
    """
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = httpx.get(f"{base_url}/api/v1/healthz", headers=headers, timeout=timeout)
    except httpx.HTTPError as error:
        raise ConfigError(
            _WHERE,
            "base_url",
            f"no Tinker server answers at {base_url} within {timeout:g} s ({type(error).__name__}: {error}).",
            "start it (`tinkerflow serve`) or set TINKER_BASE_URL (--base-url) to where it runs.",
        ) from error
    if api_key and response.status_code in (401, 403):
        raise ConfigError(
            _WHERE,
            "api_key",
            f"the server at {base_url} refuses this key (HTTP {response.status_code}).",
            "set TINKER_API_KEY to the server's key (`tinkerflow serve` prints it).",
        )


@contextlib.contextmanager
def _sdk_errors(path: str, base_url: str) -> Iterator[None]:
    """The SDK's errors as tinkerflow's, naming the field and the fix."""
    import tinker

    try:
        yield
    except (tinker.AuthenticationError, tinker.PermissionDeniedError) as error:
        raise ConfigError(
            _WHERE, "api_key", f"{base_url} refused the request for {path} ({error}).", "use a key allowed to read it."
        ) from error
    except (tinker.NotFoundError, tinker.BadRequestError, tinker.UnprocessableEntityError) as error:
        raise ConfigError(
            _WHERE,
            "tinker_path",
            f"{path}: the server at {base_url} has no such checkpoint or cannot export it ({error}).",
            "list the run's checkpoints (`tinker checkpoint list`) and pass one of them.",
        ) from error
    except tinker.APIConnectionError as error:
        raise ConfigError(
            _WHERE, "base_url", f"lost the server at {base_url} ({error}).", "check that it runs and retry."
        ) from error
    except tinker.TinkerError as error:
        raise CheckpointError(f"{path}: the download failed ({type(error).__name__}: {error}).") from error


def _fetch_through_export(
    rest: tinker.RestClient, base_url: str, api_key: str | None, path: str, folder: pathlib.Path, progress: bool
) -> None:
    """Load ``path`` into a new run, save it as a temporary external export, download that, delete it."""
    import tinker

    service = tinker.ServiceClient(base_url=base_url, api_key=api_key)
    status: Literal["success", "errored"] = "errored"
    try:
        try:
            training = service.create_training_client_from_state(
                path, user_metadata={"created_by": "tinkerflow export"}
            ).result()
        except tinker.RequestFailedError as error:  # the server took the request, then could not load the path
            raise ConfigError(
                _WHERE,
                "tinker_path",
                f"the server at {base_url} could not load {path}: {error.message.split(' for self.request_id')[0]}",
                "list the run's checkpoints (`tinker checkpoint list`) and pass one of them.",
            ) from error
        export = training.save_weights_external(EXPORT_NAME, ttl_seconds=EXPORT_TTL_S).result().path
        try:
            _fetch_external(rest, export, folder, progress, renew_ttl=True)
        finally:
            _delete_export(rest, export)
        status = "success"
    finally:
        with contextlib.suppress(Exception):  # the session is finished on a best-effort basis (it times out anyway)
            service.close(status).result(timeout=30)


def _delete_export(rest: tinker.RestClient, export: str) -> None:
    try:
        rest.delete_checkpoint_from_tinker_path(export).result()
    except Exception as error:  # the download stands; the export expires with its TTL
        print(
            f"warning: could not delete the temporary export {export} ({error}); it expires in {EXPORT_TTL_S} s.",
            file=sys.stderr,
        )


def _fetch_external(
    rest: tinker.RestClient, path: str, folder: pathlib.Path, progress: bool, *, renew_ttl: bool
) -> None:
    """Download every file of the external checkpoint ``path`` into ``folder``."""
    import httpx

    def sign() -> tinker.types.ExternalWeightsUrlsResponse:
        answer = rest.get_external_weights_urls(path).result()
        if renew_ttl:  # the temporary export outlives its URLs
            rest.set_checkpoint_ttl_from_tinker_path(path, EXPORT_TTL_S).result()
        return answer

    answer = sign()
    if not answer.urls:
        raise CheckpointError(f"{path}: the server lists no files to download.")
    destinations = safe_destinations(folder, answer.urls, path)
    with httpx.Client(timeout=FILE_TIMEOUT_S, follow_redirects=True) as http:
        for relative, file in sorted(destinations.items()):
            if datetime.datetime.now(datetime.UTC) >= answer.expires - _RESIGN_MARGIN:
                answer = sign()
            url = answer.urls.get(relative)
            if url is None:
                raise CheckpointError(f"{path}: {relative!r} disappeared from the server's file list.")
            file.parent.mkdir(parents=True, exist_ok=True)
            _fetch_file(http, url, file, relative, progress)


def safe_destinations(folder: pathlib.Path, urls: Mapping[str, str], path: str) -> dict[str, pathlib.Path]:
    """Where each relative path of ``urls`` goes under ``folder``; :class:`CheckpointError` for one that would leave
    it (absolute, ``..``, a backslash, empty parts)."""
    root = folder.resolve()
    out: dict[str, pathlib.Path] = {}
    for relative in urls:
        parts = relative.split("/")
        unsafe = "\\" in relative or "\x00" in relative or any(part in ("", ".", "..") for part in parts)
        file = (folder / relative).resolve()
        if unsafe or not file.is_relative_to(root) or file == root:
            raise CheckpointError(
                f"{path}: the server names an unsafe file path {relative!r} (it would leave the download folder); "
                "nothing was written. Fix: ask the server's operator; the checkpoint may be corrupted or malicious."
            )
        out[relative] = folder / relative
    return out


def _fetch_file(http: httpx.Client, url: str, file: pathlib.Path, relative: str, progress: bool) -> None:
    """GET ``url`` into ``file``; :class:`CheckpointError` when it fails or is not its ``Content-Length``."""
    import httpx

    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise CheckpointError(
                    f"{relative}: the file URL answered HTTP {response.status_code} "
                    f"({response.read()[:200].decode(errors='replace')}). Fix: run the download again."
                )
            length = response.headers.get("content-length")
            expected = int(length) if length is not None and length.isdigit() else None
            with _bar(expected, relative, progress) as bar, file.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            received = response.num_bytes_downloaded
    except httpx.HTTPError as error:
        raise CheckpointError(
            f"{relative}: the download failed ({type(error).__name__}: {error}). Fix: run it again."
        ) from error
    if expected is not None and received != expected:
        raise CheckpointError(
            f"{relative}: received {received} bytes of {expected} (Content-Length). Fix: run the download again."
        )


def _bar(total: int | None, label: str, enabled: bool) -> Any:
    from tqdm import tqdm

    class _Bar(tqdm):  # type: ignore[misc]  # tqdm ships no type information
        monitor_interval = 0  # no monitor thread left behind

    return _Bar(
        total=total,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
    )


def verify_download(folder: pathlib.Path, path: str) -> None:
    """Every ``*.safetensors`` in ``folder`` parses, and a ``checkpoint.json`` names files that are there.

    Raises:
        CheckpointError: a file does not parse, ``checkpoint.json`` is unreadable, or a file it implies is missing.
    """
    from safetensors import safe_open

    for file in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="numpy") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError)
            relative = file.relative_to(folder).as_posix()
            raise CheckpointError(
                f"{path}: {relative} is not a readable safetensors file ({error}). Fix: run the download again."
            ) from error
    if not (folder / META_FILE).is_file():
        return
    meta = CheckpointMeta.from_json((folder / META_FILE).read_text(encoding="utf-8"), path)
    needed = [ADAPTER_FILE if meta.lora_rank is not None else FULL_FILE]
    if meta.has_optimizer:
        needed.append(OPTIMIZER_FILE)
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{path}: {META_FILE} names {', '.join(missing)}, which the download lacks. Fix: run it again; if it "
            "persists, the checkpoint on the server is incomplete."
        )
