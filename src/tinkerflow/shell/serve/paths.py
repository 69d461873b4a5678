"""``tinker://`` paths of this server and the local checkpoints they name. (Shell.)

The server hands out ``tinker://<run id>/weights/<name>`` (``save_state``),
``tinker://<run id>/sampler_weights/<name>`` (``save_weights_for_sampler``) and
``tinker://<run id>/external_weights/<name>`` (``save_weights_external``, for downloads), the service's grammar.
Run ids are the service's too: ``<session id>:train:<n>``. Each path names the local backend's checkpoint
``local://<local run id>/<kind>/<name>`` under ``<store>/checkpoints``, where the local run id spells each ``:`` as
``__`` (a file-name-safe spelling, reversible because the server's run ids never hold ``_``). Run ids and names are
checked against one pattern (letters, digits, ``.``, ``_``, ``-``; starting with a letter or digit), so no path a
client sends can leave the checkpoint directory.
"""

from __future__ import annotations

from typing import Final

from tinkerflow.errors import ValidationError
from tinkerflow.shell.backends.local.checkpoint import LocalPath
from tinkerflow.shell.serve.errors import ServeError

__all__ = ["TINKER_SCHEME", "from_local", "local_run_id", "model_id_of", "parse_tinker_path", "to_local"]

TINKER_SCHEME: Final = "tinker://"


def local_run_id(model_id: str) -> str:
    """The local backend's run id of the training run ``model_id`` (``:`` spelled ``__``)."""
    return model_id.replace(":", "__")


def model_id_of(run_id: str) -> str:
    """The training run id of a local run id (inverse of :func:`local_run_id`)."""
    return run_id.replace("__", ":")


def parse_tinker_path(path: object, field: str = "path") -> LocalPath:
    """The checkpoint a ``tinker://<run id>/<weights|sampler_weights>/<name>`` path names.

    Raises:
        ServeError: 400 naming ``field`` when the path is not of that form or a part is not a valid name.
    """
    if not isinstance(path, str) or not path.startswith(TINKER_SCHEME):
        raise ServeError(400, field, f"{path!r} is not a tinker:// checkpoint path (tinker://<run id>/weights/<name>).")
    try:
        run, sep, rest = path[len(TINKER_SCHEME) :].partition("/")
        if "_" in run:
            raise ValidationError("LocalPath", "run_id", f"{run!r} holds '_', which no run id of this server does.")
        return LocalPath.parse(f"local://{local_run_id(run)}{sep}{rest}")
    except ValidationError as error:
        raise ServeError(
            400,
            field,
            f"{path!r} is not a checkpoint path of the form tinker://<run id>/<weights|sampler_weights>/"
            f"<name> with names of letters, digits, '.', '_' and '-' ({error.problem})",
        ) from error


def to_local(path: object, field: str = "path") -> str:
    """The ``local://`` path of a ``tinker://`` path (see :func:`parse_tinker_path`)."""
    return str(parse_tinker_path(path, field))


def from_local(path: str) -> str:
    """The ``tinker://`` path of a ``local://`` path the local backend returned."""
    parsed = LocalPath.parse(path)
    return f"{TINKER_SCHEME}{model_id_of(parsed.run_id)}/{parsed.kind}/{parsed.name}"
