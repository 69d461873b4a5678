"""The ``tinkerflow`` command.

``tinkerflow sl CONFIG.json [key=value ...] [--dry-run]``: resolve the config (file + dotted overrides), print
it, validate it and the data before any work starts, then train (or resume) with the config's backend.

``tinkerflow rl CONFIG.json [key=value ...] [--dry-run]``: RL on a named environment
(:class:`tinkerflow.rl.config.RLConfig`; ``arithmetic``, ``guess_number``, ``math_boxed``).

``tinkerflow dpo CONFIG.json [key=value ...] [--dry-run]``: the same for DPO on preference data
(:class:`tinkerflow.preference.config.DPOConfig`).

Every subcommand takes a JSON config, overrides and ``--dry-run``; a new one is a function ``_run_<name>(args)``
and an entry in ``_CONFIG_COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from tinkerflow.config import SLConfig, apply_overrides
from tinkerflow.errors import TinkerflowError
from tinkerflow.serde import to_json

if TYPE_CHECKING:
    from tinkerflow.render import Renderer
    from tinkerflow.shell.backends.protocol import Backend

__all__ = ["main"]

C = TypeVar("C")


def _load_config_as(path: str, overrides: Sequence[str], cls: type[C]) -> C:
    """A config record of type ``cls`` from a JSON file plus ``key=value`` overrides."""
    file = pathlib.Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TinkerflowError(f"{file}: config file not found.") from error
    except json.JSONDecodeError as error:
        raise TinkerflowError(f"{file}: not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise TinkerflowError(f"{file}: a config must be a JSON object.")
    return apply_overrides(data, overrides, cls)


def _renderer(base_model: str, name: str | None) -> Renderer:
    """The renderer a config names, or its model family's."""
    from tinkerflow import render
    from tinkerflow.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    return (
        render.get_renderer(name, tokenizer) if name is not None else render.renderer_for_model(base_model, tokenizer)
    )


def _backend(kind: str, run_dir: str) -> Backend:
    """The backend a config names: the local one (checkpoints under the run directory) or the Tinker service."""
    if kind == "local":
        from tinkerflow.shell.backends.local.backend import LocalBackend

        return LocalBackend(checkpoint_dir=pathlib.Path(run_dir) / "checkpoints")
    from tinkerflow.shell.backends.tinker import TinkerBackend

    return TinkerBackend()


def _run_sl(args: argparse.Namespace) -> int:
    config = _load_config_as(args.config, args.overrides, SLConfig)
    print("resolved config:")
    print(to_json(config, indent=2))

    from tinkerflow.shell.io.sinks import check_sinks
    from tinkerflow.shell.recipes.sl import RendererAdapter, prepare_sl_data, run_sl

    check_sinks(config.log_to)  # a missing wandb/tensorboard package fails here, before any loading or training

    renderer = _renderer(config.base_model, config.renderer)
    adapter = RendererAdapter(renderer)
    data = prepare_sl_data(config, adapter)
    print(
        f"data: {len(data.train)} training and {len(data.test)} held-out conversations "
        f"({data.skipped_rows} bad rows skipped); renderer {renderer.name}"
    )
    if args.dry_run:
        return 0
    result = run_sl(config, _backend(config.backend, config.run_dir), adapter, data=data)
    print(f"\nrun directory: {config.run_dir} (metrics.jsonl, loss.html, checkpoints)")
    if result.eval_nll_before is not None and result.eval_nll_after is not None:
        print(f"held-out NLL: before {result.eval_nll_before:.4f} -> after {result.eval_nll_after:.4f}")
    return 0


def _run_dpo(args: argparse.Namespace) -> int:
    from tinkerflow.preference.config import DPOConfig

    config = _load_config_as(args.config, args.overrides, DPOConfig)
    print("resolved config:")
    print(to_json(config, indent=2))

    from tinkerflow.shell.io.sinks import check_sinks
    from tinkerflow.shell.recipes.dpo import prepare_dpo_data, run_dpo

    check_sinks(config.log_to)  # a missing wandb/tensorboard package fails here, before any loading or training

    renderer = _renderer(config.base_model, config.renderer)
    data = prepare_dpo_data(config, renderer)
    print(
        f"data: {len(data.train)} training and {len(data.test)} held-out pairs "
        f"({data.skipped_rows} bad rows skipped, {data.dropped_ties} ties dropped); renderer {renderer.name}"
    )
    if args.dry_run:
        return 0
    result = run_dpo(config, _backend(config.backend, config.run_dir), renderer, data=data)
    print(f"\nrun directory: {config.run_dir} (metrics.jsonl, {pathlib.Path(result.chart).name}, checkpoints)")
    if result.eval_before is not None and result.eval_after is not None:
        before, after = result.eval_before, result.eval_after
        print(
            f"held-out preference accuracy: before {before.policy_accuracy:.3f} -> after {after.policy_accuracy:.3f} "
            f"(implicit reward: {before.accuracy:.3f} -> {after.accuracy:.3f}; "
            f"DPO loss {before.dpo_loss:.4f} -> {after.dpo_loss:.4f})"
        )
    return 0


def _run_rl(args: argparse.Namespace) -> int:
    from tinkerflow.rl.config import RLConfig

    config = _load_config_as(args.config, args.overrides, RLConfig)
    print("resolved config:")
    print(to_json(config, indent=2))

    from tinkerflow.shell.io.sinks import check_sinks
    from tinkerflow.shell.recipes.rl import environment_datasets, run_rl

    check_sinks(config.log_to)  # a missing wandb/tensorboard package fails here, before any loading or training

    renderer = _renderer(config.base_model, config.renderer)
    train, test = environment_datasets(config, renderer)
    print(
        f"environment {config.env}: {len(train)} training batches of {config.groups_per_batch} groups x "
        f"{config.group_size}; held-out: {'none' if test is None else f'{config.eval_groups} groups'}; "
        f"renderer {renderer.name}"
    )
    if args.dry_run:
        return 0
    result = run_rl(
        config,
        _backend(config.backend, config.run_dir),
        train,
        decode=renderer.tokenizer.decode,
        test_dataset=test,
    )
    print(f"\nrun directory: {config.run_dir} (metrics.jsonl, reward.html, transcripts.html, checkpoints)")
    if result.eval_reward_before is not None and result.eval_reward_after is not None:
        print(f"held-out reward: before {result.eval_reward_before:.4f} -> after {result.eval_reward_after:.4f}")
    return 0


#: Subcommands that take ``CONFIG [key=value ...] [--dry-run]``: name -> (help, config help, runner).
_CONFIG_COMMANDS: dict[str, tuple[str, str, Callable[[argparse.Namespace], int]]] = {
    "sl": ("supervised fine-tuning from a JSON config", "path of a JSON SLConfig", _run_sl),
    "rl": ("reinforcement learning on a named environment from a JSON config", "path of a JSON RLConfig", _run_rl),
    "dpo": ("direct preference optimization from a JSON config", "path of a JSON DPOConfig", _run_dpo),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkerflow`` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tinkerflow", description="Typed post-training pipelines.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (command_help, config_help, _) in _CONFIG_COMMANDS.items():
        command = commands.add_parser(name, help=command_help)
        command.add_argument("config", help=config_help)
        command.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys for nested fields)")
        command.add_argument("--dry-run", action="store_true", help="resolve and validate config and data, then stop")
    args = parser.parse_args(argv)
    try:
        if args.command in _CONFIG_COMMANDS:
            return _CONFIG_COMMANDS[args.command][2](args)
    except TinkerflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
