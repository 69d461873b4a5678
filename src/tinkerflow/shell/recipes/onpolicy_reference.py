"""The reference policy of RL's KL term, as ``RLConfig.kl_reference`` names it (shell).

* ``initial``: the weights the run starts from, saved for sampling at the first step (``reference``);
* ``base``: the untrained ``base_model``;
* ``checkpoint``: ``kl_reference_path``: a sampler path (``tinker://`` / ``local://`` ``.../sampler_weights/...``)
  opened on the run's backend; a state path (``.../weights/...``), loaded into a training client and saved once
  for sampling; a run directory (its latest weights) or a checkpoint folder, opened as ``tinkerflow eval`` opens a
  target (:func:`tinkerflow.shell.evals.targets.open_target`, on a backend of its own);
* ``model``: the base model ``kl_reference_model`` (a teacher), on the run's backend.

A saved path (``initial``, a state path) is recorded in the run's checkpoints, so a resumed run compares with the
same weights. The reference must tokenize as the policy does (its logprobs are of the policy's tokens): a reference
whose tokenizer differs is a :class:`~tinkerflow.errors.ConfigError` naming the field, as is one that cannot be
opened.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Mapping

import attrs

from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.rl.config import RLConfig
from tinkerflow.shell.backends.protocol import Backend, SamplingClient, TrainingClient
from tinkerflow.tokenizers import Tokenizer

__all__ = ["Reference", "check_tokenizer", "open_reference", "same_tokenizer"]

#: Text whose tokens two tokenizers must agree on (chat markup, digits, punctuation, non-ASCII).
_PROBE = 'Hello, world! 12 + 30 = 42.\n<|im_start|>user\n{"name": "Ravi"} café — 東京<|im_end|>'


@attrs.frozen
class Reference:
    """An opened KL reference: its sampler, the path to record for resume (``None``: nothing to record) and what
    it was opened as (for the run's first line)."""

    sampler: SamplingClient
    recorded_path: str | None
    label: str


def same_tokenizer(first: Tokenizer, second: Tokenizer) -> bool:
    """Whether two tokenizers have the same vocabulary size and encode a probe text to the same ids."""
    return first.vocab_size == second.vocab_size and first.encode(_PROBE) == second.encode(_PROBE)


def _field(config: RLConfig) -> str:
    return {"checkpoint": "kl_reference_path", "model": "kl_reference_model"}.get(config.kl_reference, "kl_reference")


def check_tokenizer(config: RLConfig, reference: Reference, tokenizer: Tokenizer) -> None:
    """Refuse a reference whose tokenizer differs from the policy's ``tokenizer`` (``ConfigError`` naming the
    reference's field)."""
    if not same_tokenizer(reference.sampler.get_tokenizer(), tokenizer):
        raise ConfigError(
            "RLConfig",
            _field(config),
            f"the KL reference {reference.label} tokenizes text differently from the policy "
            f"({config.base_model}); its logprobs of the policy's tokens would be meaningless.",
            "use a reference (teacher) with the policy's tokenizer.",
        )


def open_reference(
    config: RLConfig,
    backend: Backend,
    client: TrainingClient | None,
    extra: Mapping[str, object],
    stack: contextlib.ExitStack,
) -> Reference:
    """The KL reference of ``config``; see the module docstring. ``client`` (the policy's training client) is
    needed for ``initial`` only; ``extra`` is the resumed run's recorded state; whatever must be closed at the end
    of the run goes on ``stack``.

    Raises:
        ConfigError: the reference cannot be opened, or tokenizes differently from the policy.
    """
    recorded = str(extra["reference"]) if "reference" in extra else None
    try:
        reference = _open(config, backend, client, recorded, stack)
    except ConfigError:
        raise
    except TinkerflowError as error:
        raise ConfigError(
            "RLConfig", _field(config), f"the KL reference cannot be opened: {error}", "name an existing one."
        ) from error
    if config.kl_reference != "initial":  # the policy's own first weights share its tokenizer
        policy = client.get_tokenizer() if client is not None else backend.get_tokenizer(config.base_model)
        check_tokenizer(config, reference, policy)
    return reference


def _open(
    config: RLConfig,
    backend: Backend,
    client: TrainingClient | None,
    recorded: str | None,
    stack: contextlib.ExitStack,
) -> Reference:
    kind = config.kl_reference
    if kind == "initial":
        if client is None:
            raise ConfigError("RLConfig", "kl_reference", "'initial' needs the policy's training client.")
        path = recorded if recorded is not None else client.save_weights_for_sampler("reference").result()
        return Reference(client.create_sampling_client(path).result(), path, "initial weights")
    if kind == "base":
        sampler = backend.create_sampling_client(base_model=config.base_model).result()
        return Reference(sampler, None, f"base model {config.base_model}")
    if kind == "model":
        assert config.kl_reference_model is not None  # RLConfig requires it with kind "model"
        sampler = backend.create_sampling_client(base_model=config.kl_reference_model).result()
        return Reference(sampler, None, f"model {config.kl_reference_model}")
    assert config.kl_reference_path is not None  # RLConfig requires it with kind "checkpoint"
    return _checkpoint(config.kl_reference_path, backend, recorded, stack, config.renderer)


def _checkpoint(
    path: str, backend: Backend, recorded: str | None, stack: contextlib.ExitStack, renderer: str | None
) -> Reference:
    """A checkpoint reference: a sampler path, a state path (saved for sampling once), a run directory or a
    checkpoint folder."""
    label = f"checkpoint {path}"
    if path.startswith(("tinker://", "local://")):
        if "/weights/" in path:  # a training state: sample its weights (saved once; resume reuses the copy)
            if recorded is None:
                state_client = backend.create_training_client_from_state(path).result()
                recorded = state_client.save_weights_for_sampler("kl_reference").result()
            return Reference(backend.create_sampling_client(model_path=recorded).result(), recorded, label)
        return Reference(backend.create_sampling_client(model_path=path).result(), None, label)
    if not pathlib.Path(path).expanduser().is_dir():
        raise ConfigError(
            "RLConfig",
            "kl_reference_path",
            f"{path!r} is neither a tinker:// or local:// checkpoint path nor a folder.",
            "give a sampler or state path, a run directory or a checkpoint folder.",
        )
    from tinkerflow.shell.evals.targets import open_target

    try:
        target = open_target(path, renderer=renderer)
    except TinkerflowError as error:  # its errors name the eval command's options
        raise ConfigError(
            "RLConfig", "kl_reference_path", f"{path!r} cannot be opened: {error}", "name a run directory or folder."
        ) from error
    stack.callback(target.close)
    return Reference(target.sampler, None, label)
