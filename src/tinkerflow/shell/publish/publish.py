"""``publish``: write an export's model card (and chart) into its folder, then upload the folder to the Hugging Face
hub with ``huggingface_hub``. (Shell.)

The steps, each failing with a :class:`~tinkerflow.errors.ConfigError` on ``publish.<field>`` before the next:

1. ``repo`` is a hub id ``namespace/name``; ``folder`` is an export (has ``export.json``);
2. unless ``dry_run``, a token is at hand (``token``, else ``huggingface_hub.get_token()``: ``HF_TOKEN`` or the
   stored login);
3. an existing ``README.md`` not written by ``publish`` is kept unless ``overwrite_card``;
4. the run is found (:func:`.inputs.find_run`), read, its data files hashed, the chart drawn into
   ``training_curves.png`` and the card into ``README.md``, each written atomically (temporary file, rename);
5. unless ``dry_run``: ``create_repo(repo, private=..., exist_ok=True, repo_type="model")`` and
   ``upload_folder(...)`` of the whole folder (hidden files left out). Hub errors become ``publish.token`` (the hub
   refused the token), ``publish.repo`` (it refused the repository or the upload) or ``publish.hub`` (it could
   not be reached).
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from tinkerflow.errors import ConfigError
from tinkerflow.shell.io.run_dir import atomic_write_bytes, atomic_write_text
from tinkerflow.shell.publish.card import (
    CARD_FILE,
    CARD_MARKER,
    CHART_FILE,
    CardInputs,
    chart_keys,
    is_hub_model_id,
    metric_columns,
    recipe_of,
    render_card,
)
from tinkerflow.shell.publish.inputs import data_files, find_run, read_export, read_run

if TYPE_CHECKING:
    from tinkerflow.shell.publish.card import DataFile

__all__ = ["HubApi", "PublishResult", "check_repo_id", "publish", "upload_files"]

_WHERE: Final = "publish"
_LOGIN: Final = "log in with `hf auth login` (a token with write access), or set HF_TOKEN."
_IGNORED: Final = [".*", "**/.*"]


class HubApi(Protocol):
    """The two calls of ``huggingface_hub.HfApi`` that ``publish`` makes (a fake stands in for it in tests)."""

    def create_repo(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool | None = None,
        repo_type: str | None = None,
        exist_ok: bool = False,
    ) -> object: ...

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | pathlib.Path,
        commit_message: str | None = None,
        token: str | None = None,
        repo_type: str | None = None,
        ignore_patterns: list[str] | str | None = None,
    ) -> object: ...


@attrs.frozen
class PublishResult:
    """What :func:`publish` did.

    Attributes:
        folder: the export folder.
        repo: the hub repository.
        card: the ``README.md`` written.
        chart: the chart written, or ``None`` (no run or no curve to draw).
        run_dir: the run directory the card was made from, or ``None`` when none was found.
        files: the files of the folder that are (or, in a dry run, would be) uploaded, relative, sorted.
        uploaded: whether the folder was uploaded.
        url: the repository's address on the hub.
        notes: warnings for the user (no run found, data files missing, license unknown).
    """

    folder: pathlib.Path
    repo: str
    card: pathlib.Path
    chart: pathlib.Path | None
    run_dir: pathlib.Path | None
    files: tuple[str, ...]
    uploaded: bool
    url: str
    notes: tuple[str, ...] = ()


def check_repo_id(repo: str) -> str:
    """``repo`` when it is a hub model id ``namespace/name``.

    Raises:
        ConfigError: on ``publish.repo`` otherwise, saying the rule.
    """
    if not is_hub_model_id(repo):
        raise ConfigError(
            _WHERE,
            "repo",
            f"{repo!r} is not a hub repository id.",
            "write namespace/name (your user or organization, a slash, the model's name): letters, digits, "
            "'-', '_' and '.', no '--' or '..', not starting or ending with '-' or '.', at most 96 each.",
        )
    return repo


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise ConfigError(_WHERE, "token", "no Hugging Face token: you are not logged in.", _LOGIN)
    return found


def _check_card(card: pathlib.Path, overwrite_card: bool) -> None:
    if overwrite_card or not card.exists():
        return
    try:
        ours = CARD_MARKER in card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise ConfigError(
            _WHERE,
            "overwrite_card",
            f"{card} exists and was not written by tinkerflow publish.",
            "pass --overwrite-card (overwrite_card=True) to replace it, or move it away.",
        )


def upload_files(folder: pathlib.Path) -> tuple[str, ...]:
    """The files of ``folder`` an upload sends: every file, relative, sorted; hidden ones (temporary files) left
    out."""
    return tuple(
        sorted(
            path.relative_to(folder).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
    )


def _notes(inputs: CardInputs, run_dir: pathlib.Path | None) -> tuple[str, ...]:
    notes = []
    if run_dir is None:
        notes.append(
            f"no run directory found from the export's source {inputs.export.source!r}: the card has no config, "
            "data or metrics (pass --run RUN_DIR)."
        )
    notes += [f"data file {item.source!r} ({item.field}) no longer exists" for item in _missing(inputs.data)]
    if inputs.license.license is None:
        notes.append(f"the base model's license is unknown ({inputs.license.origin}); the card says so.")
    return tuple(notes)


def _missing(data: tuple[DataFile, ...]) -> list[DataFile]:
    return [item for item in data if item.kind == "missing"]


def _write_card(
    folder: pathlib.Path, repo: str, run_dir: pathlib.Path | None
) -> tuple[CardInputs, pathlib.Path | None]:
    """Read everything, draw the chart, write the card; returns what the card was made of and the chart."""
    from tinkerflow import __version__
    from tinkerflow.shell.publish.chart import curves_png
    from tinkerflow.shell.publish.license import base_license, hub_base_model

    export = read_export(folder)
    run = find_run(export, run_dir)
    config, rows = read_run(run) if run is not None else (None, ())
    chart: pathlib.Path | None = None
    keys = chart_keys(recipe_of(config), metric_columns(rows))
    png = curves_png(rows, keys, "Training curves") if keys else None
    if png is not None:
        chart = folder / CHART_FILE
        atomic_write_bytes(chart, png)
    inputs = CardInputs(
        repo=repo,
        export=export,
        hub_base_model=hub_base_model(export.base_model),
        license=base_license(export.base_model),
        run_dir=str(run) if run is not None else None,
        config=config,
        metrics=rows,
        data=data_files(config, run) if config is not None else (),
        chart=CHART_FILE if chart is not None else None,
        version=__version__,
    )
    atomic_write_text(folder / CARD_FILE, render_card(inputs))
    return inputs, chart


def _hub_error(error: Exception, repo: str, endpoint: str) -> ConfigError:
    """A typed error for what the hub (or the way to it) answered."""
    from huggingface_hub.errors import HfHubHTTPError

    detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            return ConfigError(_WHERE, "token", f"the hub refused the token for {repo!r} ({detail}).", _LOGIN)
        return ConfigError(
            _WHERE,
            "repo",
            f"the hub refused {repo!r} ({detail}).",
            "check the repository name and that your token may write to its namespace.",
        )
    return ConfigError(
        _WHERE,
        "hub",
        f"cannot reach the Hugging Face hub at {endpoint} ({detail}).",
        "check the network (and HF_ENDPOINT, HF_HUB_OFFLINE); --dry-run writes the card without uploading.",
    )


def _transport_errors() -> tuple[type[Exception], ...]:
    """OSError (sockets, offline mode) and the base error of the HTTP library huggingface_hub uses (the base of its
    ``HfHubHTTPError``: connection refused, timeouts and HTTP status errors all derive from it)."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, *(base for base in HfHubHTTPError.__bases__ if issubclass(base, Exception)))


def _upload(api: HubApi | None, folder: pathlib.Path, repo: str, private: bool, token: str) -> str:
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        url = api.create_repo(repo, token=token, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            folder_path=folder,
            commit_message="Upload model exported and published by tinkerflow",
            token=token,
            repo_type="model",
            ignore_patterns=list(_IGNORED),
        )
    except _transport_errors() as error:
        from huggingface_hub import constants

        endpoint = getattr(api, "endpoint", None)
        raise _hub_error(error, repo, endpoint if isinstance(endpoint, str) else constants.ENDPOINT) from error
    return str(url) if isinstance(url, str) else f"https://huggingface.co/{repo}"


def publish(
    folder: str | os.PathLike[str],
    repo: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    overwrite_card: bool = False,
    api: HubApi | None = None,
) -> PublishResult:
    """Write the model card of the export ``folder`` and upload the folder to the hub repository ``repo``.

    Args:
        folder: a folder written by ``tinkerflow export`` (holds ``export.json``).
        repo: the hub repository, ``namespace/name`` (created if missing).
        run_dir: the run the checkpoint came from; default: found from ``export.json``'s source.
        private: create the repository private (an existing one keeps its visibility).
        token: a hub token; default ``huggingface_hub.get_token()`` (``HF_TOKEN`` or the stored login).
        dry_run: write the card and chart and list the files, upload nothing (no network, no token needed).
        overwrite_card: replace a ``README.md`` that ``publish`` did not write.
        api: the ``HfApi``-like object to upload with (default ``huggingface_hub.HfApi(token=token)``).

    Raises:
        ConfigError: on ``publish.repo``, ``publish.folder``, ``publish.run``, ``publish.token``,
            ``publish.overwrite_card`` or ``publish.hub`` (see the module docstring), naming the fix.
    """
    check_repo_id(repo)
    target = pathlib.Path(folder).expanduser()
    read_export(target)  # before asking for a token: a wrong folder is the first thing to say
    resolved_token = None if dry_run else _resolve_token(token)
    _check_card(target / CARD_FILE, overwrite_card)
    run = pathlib.Path(run_dir).expanduser() if run_dir is not None else None
    inputs, chart = _write_card(target, repo, run)
    found = pathlib.Path(inputs.run_dir) if inputs.run_dir is not None else None
    url = f"https://huggingface.co/{repo}"
    if resolved_token is not None:
        url = _upload(api, target, repo, private, resolved_token)
    return PublishResult(
        folder=target,
        repo=repo,
        card=target / CARD_FILE,
        chart=chart,
        run_dir=found,
        files=upload_files(target),
        uploaded=resolved_token is not None,
        url=url,
        notes=_notes(inputs, found),
    )
