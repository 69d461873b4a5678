"""What ``tinkerflow eval`` and the Inspect provider evaluate: a sampling client opened from a name. (Shell.)

A target is

* ``tinker://<run>/<kind>/<name>``: a checkpoint on a Tinker server (the service or ``tinkerflow serve``), sampled
  there through the ``tinker`` SDK (``base_url`` / ``$TINKER_BASE_URL``, ``$TINKER_API_KEY``);
* ``local://<run>/<kind>/<name>`` (under ``checkpoint_dir``, default the local backend's), a checkpoint folder
  (holding ``checkpoint.json``, wherever it lies) or a run directory (its ``state.json``: the latest sampler weights,
  else the latest state; a ``tinker://`` one is sampled on its server): sampled on this machine;
* anything else: a base model name the local backend loads (the embedded SmolLM2, ``tiny-llama``, a local HF
  folder, a name in the hub cache), untrained.

The renderer is the one named, else the base model's family (as the ``tinkerflow`` commands pick it).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import attrs

from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.render import Renderer
from tinkerflow.shell.backends.protocol import SamplingClient
from tinkerflow.tokenizers import Tokenizer

if TYPE_CHECKING:
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.backends.local.sampling import LocalSamplingClient
    from tinkerflow.shell.backends.tinker import TinkerBackend

__all__ = ["Target", "open_target"]

_WHERE: Final = "eval"


@attrs.frozen
class Target:
    """An opened target.

    Attributes:
        label: the target as named.
        sampler: its sampling client.
        renderer: the renderer of its base model.
        backend: the backend sampling it (judges of ``judge`` evaluations are made on it).
        checkpoint: the checkpoint sampled (``None`` for a base model).
    """

    label: str
    sampler: SamplingClient
    renderer: Renderer
    backend: LocalBackend | TinkerBackend = attrs.field(eq=False)
    checkpoint: str | None = None

    @property
    def base_model(self) -> str:
        return self.sampler.get_base_model()

    def close(self) -> None:
        """Release the sampler and its backend."""
        close = getattr(self.sampler, "close", None)
        if callable(close):
            close()
        self.backend.close()


def _renderer_for(base_model: str, name: str | None, tokenizer_of: Callable[[str], Tokenizer]) -> Renderer:
    from tinkerflow import render

    tokenizer = tokenizer_of(base_model)
    if name is not None:
        return render.get_renderer(name, tokenizer)
    try:
        return render.renderer_for_model(base_model, tokenizer)
    except TinkerflowError as error:
        raise ConfigError(
            _WHERE,
            "renderer",
            f"no renderer is registered for {base_model!r} ({error}).",
            "name one: tinkerflow eval --renderer NAME, or inspect ... -M renderer=NAME.",
        ) from error


def _tokenizer_for_tinker(base_model: str) -> Tokenizer:
    """The tokenizer of a model on a Tinker server: the shell's loader, else the local backend's (tiny models)."""
    from tinkerflow.shell.io.tokenizers import load_tokenizer
    from tinkerflow.tokenizers import TokenizerError

    try:
        return load_tokenizer(base_model)
    except TokenizerError:
        from tinkerflow.shell.backends.local.models import load_tokenizer as load_local

        return load_local(base_model)


def _open_tinker(path: str, renderer: str | None, base_url: str | None, api_key: str | None, label: str) -> Target:
    from tinkerflow.shell.backends.tinker import TinkerBackend

    backend = TinkerBackend(api_key=api_key, base_url=base_url)
    try:
        sampler = backend.create_sampling_client(model_path=path).result()
        chosen = _renderer_for(sampler.get_base_model(), renderer, _tokenizer_for_tinker)
    except BaseException:
        backend.close("errored")
        raise
    return Target(label, sampler, chosen, backend, path)


def _folder_sampler(backend: LocalBackend, directory: pathlib.Path) -> LocalSamplingClient:
    """A sampler of the checkpoint folder ``directory`` (wherever it lies), on ``backend``'s base models."""
    from tinkerflow.shell.backends.local.checkpoint import read_meta, read_weights
    from tinkerflow.shell.backends.local.lora import LoraSetup
    from tinkerflow.shell.backends.local.sampling import sampler_from_weights

    meta = read_meta(directory, str(directory))
    base = backend.base_model(meta.base_model)
    lora = None if meta.lora_rank is None else LoraSetup(meta.lora_rank, meta.target_modules, meta.lora_alpha)
    return sampler_from_weights(base, lora, read_weights(directory, meta, base.device), str(directory))


def open_target(
    name: str,
    *,
    renderer: str | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Target:
    """The sampler ``name`` designates (see the module docstring) and its renderer (``renderer``, else the base
    model's family). :meth:`Target.close` it when done.

    Raises:
        ConfigError: no renderer is registered for the base model (pass ``renderer``); a ``tinker://`` target with
            no key or server; a checkpoint that does not exist.
    """
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.backends.local.checkpoint import META_FILE, SCHEME
    from tinkerflow.shell.io.run_dir import STATE_FILE, read_state

    label = name
    if name.startswith("tinker://"):
        return _open_tinker(name, renderer, base_url, api_key, label)
    folder = pathlib.Path(name).expanduser()
    root = pathlib.Path(checkpoint_dir).expanduser() if checkpoint_dir is not None else None
    if folder.is_dir() and (folder / STATE_FILE).is_file():  # a run directory: its latest weights
        state = read_state(folder)
        if state is None:
            raise ConfigError(_WHERE, "target", f"{name!r}: its {STATE_FILE} names no checkpoint.")
        name = state.sampler_checkpoint or state.checkpoint
        if name.startswith("tinker://"):
            return _open_tinker(name, renderer, base_url, api_key, label)
        root = folder / "checkpoints"  # where the commands' local backend keeps a run's checkpoints
    backend = LocalBackend(checkpoint_dir=root, device=device)
    checkpoint: str | None = None
    try:
        if name.startswith(SCHEME):
            sampler = backend.create_sampling_client(model_path=name).result()
            checkpoint = name
        elif folder.is_dir() and (folder / META_FILE).is_file():
            sampler = _folder_sampler(backend, folder)
            checkpoint = str(folder)
        else:
            sampler = backend.create_sampling_client(base_model=name).result()
        chosen = _renderer_for(sampler.get_base_model(), renderer, backend.get_tokenizer)
    except BaseException:
        backend.close()
        raise
    return Target(label, sampler, chosen, backend, checkpoint)
