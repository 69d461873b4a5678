"""The ``tinkerflow`` command.

``tinkerflow sl CONFIG.json [key=value ...] [--dry-run]``: resolve the config (file + dotted overrides), print
it, validate it and the data before any work starts, then train (or resume) with the config's backend.

``tinkerflow rl CONFIG.json [key=value ...] [--dry-run]``: RL on a named environment
(:class:`tinkerflow.rl.config.RLConfig`; ``arithmetic``, ``guess_number``, ``math_boxed``).

``tinkerflow dpo CONFIG.json [key=value ...] [--dry-run]``: the same for DPO on preference data
(:class:`tinkerflow.preference.config.DPOConfig`).

``tinkerflow distill CONFIG.json ...``: on-policy distillation from a teacher
(:class:`tinkerflow.rl.distill_config.DistillConfig`); ``tinkerflow rlhf CONFIG.json ...``: a pairwise judge
trained on comparisons, then RL against it (:class:`tinkerflow.rl.rlhf_config.RLHFConfig`). Their bodies are
:mod:`tinkerflow.shell.recipes.onpolicy_commands`.

``tinkerflow serve [--port N] [--model NAME=SOURCE ...] [--store DIR]``: Tinker's HTTP API on this machine, so the
unmodified ``tinker`` SDK and tinker-cookbook run on the local backend (:mod:`tinkerflow.shell.serve`).

``tinkerflow export CHECKPOINT --out DIR --format hf|peft|gguf``: a checkpoint as a Hugging Face folder (LoRA
merged), a PEFT adapter or a GGUF file (:mod:`tinkerflow.shell.export`).

``tinkerflow publish DIR --repo NAME``: an export with a model card generated from its run, uploaded to the Hugging
Face hub (:mod:`tinkerflow.shell.publish`).

``tinkerflow eval TARGET ...``: evaluations, benchmarks and Inspect tasks against a checkpoint or a base model
(:mod:`tinkerflow.shell.evals`).

The config records are the single source of the command line (:mod:`tinkerflow.config_fields`):
``tinkerflow sl --help`` lists every field with its type, default and documentation, ``tinkerflow sl --template``
prints a complete config to start from (required fields hold ``"<required: fill in>"``), and overrides and flags
may come in any order. Unknown keys are refused with the closest field names.

Every subcommand takes a JSON config, overrides, ``--dry-run`` and ``--template``; a new one is a function
``_run_<name>(config, dry_run)`` and an entry in :func:`_commands`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar, cast

import attrs

from tinkerflow._validate import JsonTextError, read_json_text
from tinkerflow.config import RunConfig, SLConfig
from tinkerflow.config_fields import (
    REQUIRED,
    check_known_keys,
    config_template,
    fields_help,
    merge_overrides,
    placeholder_fields,
)
from tinkerflow.errors import ConfigError, TinkerflowError
from tinkerflow.serde import structure, to_json

if TYPE_CHECKING:
    from tinkerflow.preference.config import DPOConfig
    from tinkerflow.render import Renderer
    from tinkerflow.rl.config import RLConfig
    from tinkerflow.rl.distill_config import DistillConfig
    from tinkerflow.rl.rlhf_config import RLHFConfig
    from tinkerflow.shell.backends.local.backend import LocalBackend
    from tinkerflow.shell.backends.tinker import TinkerBackend

__all__ = ["main"]

C = TypeVar("C")
D = TypeVar("D")


def _read_config_file(path: str) -> dict[str, object]:
    """The JSON object in the config file ``path`` (read strictly: :func:`tinkerflow._validate.read_json_text`)."""
    file = pathlib.Path(path)
    try:
        if file.is_dir():  # a pipe is fine: `tinkerflow sl <(make-config)`
            raise TinkerflowError(f"{file}: not a file but a folder (a config is a JSON file).")
        data = read_json_text(file.read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise TinkerflowError(f"{file}: config file not found.") from error
    except UnicodeDecodeError as error:
        raise TinkerflowError(f"{file}: not valid UTF-8 (byte {error.start}); save the config as UTF-8.") from error
    except JsonTextError as error:
        what = "the file" if error.field == "line" else f"the key {error.field!r}"
        fix = f" Fix: {error.fix}" if error.fix else ""
        raise TinkerflowError(f"{file}: {what} {error.problem}{fix}") from error
    except OSError as error:
        raise TinkerflowError(f"{file}: cannot read the config file ({error.strerror or error}).") from error
    if not isinstance(data, dict):
        raise TinkerflowError(f"{file}: a config must be a JSON object.")
    return cast("dict[str, object]", data)


def _load_config_as(path: str, overrides: Sequence[str], cls: type[C]) -> C:
    """A config record of type ``cls`` from a JSON file plus ``key=value`` overrides.

    Raises:
        ConfigError: a field still holds the template's placeholder, or a key is not a field (naming the closest).
    """
    merged = merge_overrides(_read_config_file(path), overrides, cls)
    check_known_keys(merged, cls)
    unset = placeholder_fields(merged)
    if unset:
        raise ConfigError(
            cls.__name__, unset[0], f"still holds the placeholder {REQUIRED!r}.", "set it (file or key=value)."
        )
    return structure(merged, cls)


def _template(cls: type, path: str | None, overrides: Sequence[str]) -> str:
    """A complete config of ``cls`` as JSON: every field with its default (required ones marked), updated with the
    fields of the config file ``path`` (if given) and the overrides."""
    data = config_template(cls)
    if path is not None:
        data.update(_read_config_file(path))
    merged = merge_overrides(data, overrides, cls)
    check_known_keys(merged, cls)
    if not placeholder_fields(merged):
        return to_json(structure(merged, cls), indent=2)  # validated and complete
    return json.dumps(merged, indent=2, ensure_ascii=False)


def _print_config(config: object) -> None:
    print("resolved config:")
    print(to_json(config, indent=2))


def _backend(config: RunConfig) -> LocalBackend | TinkerBackend:
    """The backend a config names: the local one (checkpoints under the run directory, with the config's ``local``
    options) or the Tinker service."""
    if config.backend == "local":
        import torch

        from tinkerflow.shell.backends.local.backend import LocalBackend

        options = config.local
        dtype: torch.dtype | None = None if options.dtype == "auto" else getattr(torch, options.dtype)
        return LocalBackend(
            checkpoint_dir=pathlib.Path(config.run_dir) / "checkpoints",
            device=options.device,
            dtype=dtype,
            max_tokens_per_batch=options.max_tokens_per_batch,
            logprob_chunk_tokens=options.logprob_chunk_tokens,
            checkpoint_layers=options.checkpoint_layers,
            return_freed_memory=options.return_freed_memory,
            sampling_engine=options.sampling_engine,
            vllm_options=options.vllm_options or None,
        )
    from tinkerflow.shell.backends.tinker import TinkerBackend

    return TinkerBackend()


def _renderer(backend: LocalBackend | TinkerBackend, base_model: str, name: str | None) -> Renderer:
    """The renderer a config names (or its model family's), over the backend's own tokenizer of ``base_model``."""
    from tinkerflow import render

    tokenizer = backend.get_tokenizer(base_model)
    return (
        render.get_renderer(name, tokenizer) if name is not None else render.renderer_for_model(base_model, tokenizer)
    )


def _execute(
    config: RunConfig,
    prepare: Callable[[Renderer], tuple[D, str]],
    train: Callable[[LocalBackend | TinkerBackend, Renderer, D], str],
    dry_run: bool,
) -> int:
    """The flow every command shares, for the run ``config``: its sinks are checked first (a missing
    wandb/tensorboard package fails before any loading or training), then the backend is made and the renderer
    built on its tokenizer; ``prepare`` loads and checks the data and says what it found, and unless ``dry_run``,
    ``train`` runs and says what came of it. The backend is closed at the end as a context manager, so a Tinker
    session ends as ``success``, ``errored`` or ``interrupted``."""
    from tinkerflow.shell.io.sinks import check_sinks

    check_sinks(config.log_to)
    with _backend(config) as backend:  # closing says how it ended (a Tinker session's status)
        renderer = _renderer(backend, config.base_model, config.renderer)
        prepared, summary = prepare(renderer)
        print(summary)
        if dry_run:
            return 0
        report = train(backend, renderer, prepared)
    print(report)
    return 0


def _data_line(train: int, test: int, noun: str, skipped: int, renderer: Renderer, extra: str = "") -> str:
    """What a command says about its data once loaded and checked."""
    return (
        f"data: {train} training and {test} held-out {noun} ({skipped} bad rows skipped{extra}); "
        f"renderer {renderer.name}"
    )


def _run_sl(config: SLConfig, dry_run: bool) -> int:
    from tinkerflow.shell.recipes.sl import SLData, prepare_sl_data, run_sl

    def prepare(renderer: Renderer) -> tuple[SLData, str]:
        from tinkerflow.shell.evals.inline import check_evals

        data = prepare_sl_data(config, renderer)
        evals = check_evals(config.evals, data.test_conversations)
        line = _data_line(len(data.train), len(data.test), "conversations", data.skipped_rows, renderer)
        return data, line + evals

    def train(backend: LocalBackend | TinkerBackend, renderer: Renderer, data: SLData) -> str:
        result = run_sl(config, backend, renderer, data=data)
        charts = "loss.html, evals.html" if config.evals else "loss.html"
        lines = [f"\nrun directory: {config.run_dir} (metrics.jsonl, {charts}, checkpoints)"]
        if result.eval_nll_before is not None and result.eval_nll_after is not None:
            lines.append(f"held-out NLL: before {result.eval_nll_before:.4f} -> after {result.eval_nll_after:.4f}")
        if config.backend == "local":
            lines.append(f"export it: tinkerflow export {config.run_dir} --out {config.run_dir}/export --format hf")
        return "\n".join(lines)

    return _execute(config, prepare, train, dry_run)


def _run_dpo(config: DPOConfig, dry_run: bool) -> int:
    from tinkerflow.shell.recipes.dpo import DPOData, prepare_dpo_data, run_dpo

    def prepare(renderer: Renderer) -> tuple[DPOData, str]:
        from tinkerflow.shell.evals.inline import check_evals

        data = prepare_dpo_data(config, renderer)
        ties = f", {data.dropped_ties} ties dropped"
        line = _data_line(len(data.train), len(data.test), "pairs", data.skipped_rows, renderer, ties)
        return data, line + check_evals(config.evals)

    def train(backend: LocalBackend | TinkerBackend, renderer: Renderer, data: DPOData) -> str:
        result = run_dpo(config, backend, renderer, data=data)
        lines = [f"\nrun directory: {config.run_dir} (metrics.jsonl, {pathlib.Path(result.chart).name}, checkpoints)"]
        if result.eval_before is not None and result.eval_after is not None:
            before, after = result.eval_before, result.eval_after
            lines.append(
                f"held-out preference accuracy: before {before.policy_accuracy:.3f} -> "
                f"after {after.policy_accuracy:.3f} (implicit reward: {before.accuracy:.3f} -> {after.accuracy:.3f}; "
                f"DPO loss {before.dpo_loss:.4f} -> {after.dpo_loss:.4f})"
            )
        return "\n".join(lines)

    return _execute(config, prepare, train, dry_run)


def _run_rl(config: RLConfig, dry_run: bool) -> int:
    from tinkerflow.rl.types import RLDataset
    from tinkerflow.shell.recipes.rl import environment_datasets, run_rl

    def prepare(renderer: Renderer) -> tuple[tuple[RLDataset, RLDataset | None], str]:
        from tinkerflow.shell.evals.inline import check_evals

        train_set, test_set = environment_datasets(config, renderer)
        return (train_set, test_set), (
            f"environment {config.env}: {len(train_set)} training batches of {config.groups_per_batch} groups x "
            f"{config.group_size}; held-out: {'none' if test_set is None else f'{config.eval_groups} groups'}; "
            f"renderer {renderer.name}{check_evals(config.evals)}"
        )

    def train(
        backend: LocalBackend | TinkerBackend, renderer: Renderer, datasets: tuple[RLDataset, RLDataset | None]
    ) -> str:
        result = run_rl(
            config, backend, datasets[0], decode=renderer.tokenizer.decode, test_dataset=datasets[1], renderer=renderer
        )
        lines = [f"\nrun directory: {config.run_dir} (metrics.jsonl, reward.html, transcripts.html, checkpoints)"]
        if result.eval_reward_before is not None and result.eval_reward_after is not None:
            lines.append(
                f"held-out reward: before {result.eval_reward_before:.4f} -> after {result.eval_reward_after:.4f}"
            )
        return "\n".join(lines)

    return _execute(config, prepare, train, dry_run)


def _run_distill(config: DistillConfig, dry_run: bool) -> int:
    from tinkerflow.shell.recipes.onpolicy_commands import run_distill_command

    return run_distill_command(config, dry_run, _execute)


def _run_rlhf(config: RLHFConfig, dry_run: bool) -> int:
    from tinkerflow.shell.recipes.onpolicy_commands import run_rlhf_command

    return run_rlhf_command(config, dry_run, _execute)


@attrs.frozen
class _Command:
    """A subcommand that trains from a config record: ``CONFIG [key=value ...] [--dry-run] [--template]``."""

    help: str
    config_class: Callable[[], type]
    run: Callable[[str, Sequence[str], bool], int]
    """``run(config_path, overrides, dry_run)``: load the command's own config record, print it, train."""


def _runner(
    config_class: Callable[[], type[C]], train: Callable[[C, bool], int]
) -> Callable[[str, Sequence[str], bool], int]:
    """A command's ``run``: the config file plus overrides as a ``config_class()`` record, printed, then trained."""

    def run(path: str, overrides: Sequence[str], dry_run: bool) -> int:
        config = _load_config_as(path, overrides, config_class())
        _print_config(config)
        return train(config, dry_run)

    return run


def _sl_config() -> type[SLConfig]:
    return SLConfig


def _rl_config() -> type[RLConfig]:
    from tinkerflow.rl.config import RLConfig

    return RLConfig


def _dpo_config() -> type[DPOConfig]:
    from tinkerflow.preference.config import DPOConfig

    return DPOConfig


def _distill_config() -> type[DistillConfig]:
    from tinkerflow.rl.distill_config import DistillConfig

    return DistillConfig


def _rlhf_config() -> type[RLHFConfig]:
    from tinkerflow.rl.rlhf_config import RLHFConfig

    return RLHFConfig


def _commands() -> Mapping[str, _Command]:
    return {
        "sl": _Command("supervised fine-tuning from a JSON config", _sl_config, _runner(_sl_config, _run_sl)),
        "rl": _Command(
            "reinforcement learning on a named environment from a JSON config",
            _rl_config,
            _runner(_rl_config, _run_rl),
        ),
        "dpo": _Command(
            "direct preference optimization from a JSON config", _dpo_config, _runner(_dpo_config, _run_dpo)
        ),
        "distill": _Command(
            "on-policy distillation from a teacher model or checkpoint, from a JSON config",
            _distill_config,
            _runner(_distill_config, _run_distill),
        ),
        "rlhf": _Command(
            "RLHF (a pairwise judge trained on comparisons, then RL against it) from a JSON config",
            _rlhf_config,
            _runner(_rlhf_config, _run_rlhf),
        ),
    }


def _command_parser(name: str, command: _Command) -> argparse.ArgumentParser:
    """The parser of one subcommand; its help ends with every field of the command's config record."""
    cls = command.config_class()
    parser = argparse.ArgumentParser(
        prog=f"tinkerflow {name}",
        description=f"{command.help[0].upper()}{command.help[1:]} ({cls.__name__}).",
        epilog=f"{cls.__name__} fields (in the JSON file, or as key=value; dotted keys reach nested records):\n"
        + fields_help(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help=f"path of a JSON {cls.__name__}")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, before or after the flags")
    parser.add_argument("--dry-run", action="store_true", help="resolve and validate config and data, then stop")
    parser.add_argument(
        "--template",
        action="store_true",
        help=f"print a complete JSON {cls.__name__} (every field with its default; required fields hold "
        f"{REQUIRED!r}; CONFIG and overrides fill it in) and stop",
    )
    return parser


def _top_parser(commands: Mapping[str, _Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinkerflow",
        description="Typed post-training pipelines. `tinkerflow COMMAND --help` lists the command's config fields.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, command in commands.items():
        subparsers.add_parser(name, help=command.help, add_help=False)
    subparsers.add_parser(
        "serve", help="serve Tinker's API on this machine (`tinkerflow serve --help`)", add_help=False
    )
    subparsers.add_parser(
        "export", help="a checkpoint as a HF folder or PEFT adapter (`tinkerflow export --help`)", add_help=False
    )
    subparsers.add_parser(
        "publish", help="an export to the Hugging Face hub with a model card (`tinkerflow publish --help`)",
        add_help=False,
    )  # fmt: skip
    subparsers.add_parser(
        "eval", help="evaluate a checkpoint or model: evals, benchmarks, Inspect tasks (`tinkerflow eval --help`)",
        add_help=False,
    )  # fmt: skip
    return parser


def _run_command(name: str, command: _Command, argv: Sequence[str]) -> int:
    parser = _command_parser(name, command)
    args = parser.parse_intermixed_args(argv)
    cls = command.config_class()
    overrides: list[str] = list(args.overrides)
    path: str | None = args.config
    if path is not None and "=" in path and not pathlib.Path(path).exists():  # only overrides (e.g. --template)
        overrides.insert(0, path)
        path = None
    if args.template:
        print(_template(cls, path, overrides))
        return 0
    if path is None:
        parser.error(f"give a JSON {cls.__name__} file (start from `tinkerflow {name} --template`).")
    return command.run(path, overrides, args.dry_run)


#: The subcommands that parse their own options (``main(argv) -> int`` of each module), imported when run.
_OWN_OPTIONS: Final = {
    "serve": "tinkerflow.shell.serve.command",
    "export": "tinkerflow.shell.export.command",
    "publish": "tinkerflow.shell.publish.command",
    "eval": "tinkerflow.shell.evals.command",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tinkerflow`` command; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if arguments and arguments[0] in _OWN_OPTIONS:  # commands with their own options, not a config record
        module = importlib.import_module(_OWN_OPTIONS[arguments[0]])
        try:
            status: int = module.main(arguments[1:])
            return status
        except TinkerflowError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if not arguments or arguments[0] not in commands:
        _top_parser(commands).parse_args(arguments)  # prints the usage or help and exits
        return 1
    name = arguments[0]
    try:
        status = _run_command(name, commands[name], arguments[1:])
        sys.stdout.flush()  # a reader that went away shows here, inside the handler below
        return status
    except TinkerflowError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``tinkerflow sl --help | head``): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
