"""Environments named by import path (shell): ``RLConfig.env = "package.module:factory"``.

Your own environment runs from ``tinkerflow rl`` with no change to tinkerflow: write a dataset factory in any
importable module (an installed package, or a module on ``PYTHONPATH``) and name it in the config::

    {"env": "my_envs.counting:dataset", "env_args": {"target": 7}, ...}

The factory is called twice, with keywords only besides the renderer:

* training: ``factory(renderer, batch_size=groups_per_batch, n_batches=steps, seed=seed, split="train",
  group_size=group_size, max_tokens=max_tokens, **env_args)``;
* held-out: the same with ``batch_size=max(eval_groups, 1)``, ``n_batches=1``, ``seed=seed + 7919``,
  ``split="test"``; return ``None`` for no held-out set.

It returns an :class:`~tinkerflow.rl.types.RLDataset` (``len`` and ``get_batch(index)`` of environment-group
builders, deterministic in the index so a resumed run rolls out the same batches), e.g. a
:class:`~tinkerflow.rl.envs.GeneratedRLDataset` or a :class:`~tinkerflow.rl.envs.ListRLDataset`. Importing the
module runs its code: name only modules you trust.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final

from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer
from tinkerflow.rl.config import RLConfig
from tinkerflow.rl.types import RLDataset

__all__ = ["TEST_SEED_OFFSET", "custom_datasets", "is_import_path", "load_factory"]

#: The held-out set's seed is the run's seed plus this (as for the built-in environments).
TEST_SEED_OFFSET: Final = 7919

_FACTORY_FIX: Final = (
    "the factory takes (renderer, *, batch_size, n_batches, seed, split, group_size, max_tokens, **env_args); "
    "see docs/rl.md."
)


def is_import_path(env: str) -> bool:
    """Whether ``env`` names a factory by import path (``module:attribute``) rather than a built-in name."""
    return ":" in env


def load_factory(env: str) -> Callable[..., object]:
    """The callable ``env`` (``package.module:attribute``, the attribute possibly dotted) names.

    Raises:
        ConfigError: ``RLConfig.env`` is malformed, its module cannot be imported, or it names nothing callable.
    """
    module_name, _, attribute = env.partition(":")
    if not module_name or not attribute:
        raise ConfigError("RLConfig", "env", f"{env!r} is not 'module:factory'.", "write e.g. 'my_envs:dataset'.")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as error:  # the module's own code may raise anything while it is imported
        raise ConfigError(
            "RLConfig",
            "env",
            f"cannot import {module_name!r} ({type(error).__name__}: {error}).",
            "check the module path, and that its package is installed or on PYTHONPATH.",
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError("RLConfig", "env", f"{module_name!r} has no {attribute!r}.", "check the factory's name.")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError("RLConfig", "env", f"{env!r} is a {type(target).__name__}, not a callable.", _FACTORY_FIX)
    return target


def _dataset(value: object, split: str, env: str) -> RLDataset:
    if not (hasattr(value, "__len__") and callable(getattr(value, "get_batch", None))):
        raise ConfigError(
            "RLConfig",
            "env",
            f"{env} returned a {type(value).__name__} for split {split!r}, not an RL dataset.",
            "return an object with len() and get_batch(index) (e.g. GeneratedRLDataset or ListRLDataset).",
        )
    return value  # type: ignore[return-value]  # checked structurally just above (RLDataset is a Protocol)


def custom_datasets(config: RLConfig, renderer: Renderer) -> tuple[RLDataset, RLDataset | None]:
    """The training and held-out datasets of the factory ``config.env`` names (see the module docstring).

    Raises:
        ConfigError: the factory cannot be loaded, refuses the keywords (``RLConfig.env_args``), or returns
            something that is not an RL dataset (or ``None`` for training).
    """
    factory = load_factory(config.env)
    common: dict[str, object] = {"group_size": config.group_size, "max_tokens": config.max_tokens}
    common.update(config.env_args)
    try:
        train = factory(
            renderer, batch_size=config.groups_per_batch, n_batches=config.steps, seed=config.seed, split="train",
            **common,
        )  # fmt: skip
        test = factory(
            renderer, batch_size=max(config.eval_groups, 1), n_batches=1, seed=config.seed + TEST_SEED_OFFSET,
            split="test", **common,
        )  # fmt: skip
    except TypeError as error:  # a keyword the factory does not take
        raise ConfigError("RLConfig", "env_args", f"{config.env}: {error}.", _FACTORY_FIX) from error
    return _dataset(train, "train", config.env), None if test is None else _dataset(test, "test", config.env)
