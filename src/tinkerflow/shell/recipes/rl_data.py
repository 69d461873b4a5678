"""RL problems from a data file (shell): ``env="math_boxed"`` with ``env_args={"data": "problems.jsonl"}``.

The problems are streamed like SL and DPO rows (:mod:`tinkerflow.shell.io.streaming`): every row is checked once
(:func:`tinkerflow.rl.envs.math_boxed.problem_from_json`: strict keys, a usable question and answer), then a
batch's problems are read from the file, and their environment-group builders made, when the batch is rolled
out. Batches follow :class:`tinkerflow.rl.envs.ListRLDataset`: a seeded shuffle per epoch, as many epochs as
``steps`` needs, so a resumed run rolls out the same problems.

``env_args`` keys of the data (the others go to the environment: ``fewshot``, ``format_coef``, ``max_tokens``):

* ``data`` (required): a JSONL file, ``hf:org/name`` or ``hf-disk:/path``;
* ``test_data``, ``test_fraction`` (default 0), ``hf_split``, ``hf_test_split``, ``hf_subset``, ``bad_rows``
  (``raise`` | ``skip``): as the SL config's fields of the same names; the held-out problems are rolled out at
  each evaluation (``eval_groups`` of them);
* ``question_key`` (default ``problem``), ``answer_key`` (default ``answer``): the row's keys (an HF dataset's
  columns).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from tinkerflow.chat_format import SourcedRow
from tinkerflow.config import DataConfig
from tinkerflow.errors import ConfigError
from tinkerflow.render import Renderer
from tinkerflow.rl.config import EnvArg, RLConfig
from tinkerflow.rl.envs import ListRLDataset, math_boxed
from tinkerflow.rl.envs.base import ProblemOptions
from tinkerflow.rl.types import EnvGroupBuilder, RLDataset
from tinkerflow.shell.io.data import RowFormat
from tinkerflow.shell.io.scan import scan_split, streamed
from tinkerflow.shell.io.streaming import one_by_one

__all__ = ["DATA_KEYS", "problem_datasets", "problem_format"]

#: ``env_args`` keys that describe the problems' data rather than the environment.
DATA_KEYS: Final = (
    "data",
    "test_data",
    "test_fraction",
    "hf_split",
    "hf_test_split",
    "hf_subset",
    "bad_rows",
    "question_key",
    "answer_key",
)
_TEXT_KEYS: Final = ("data", "test_data", "hf_split", "hf_test_split", "hf_subset", "bad_rows")


def problem_format(question_key: str, answer_key: str) -> RowFormat[math_boxed.MathProblem]:
    """Math problem rows: JSONL lines or row dicts read strictly; an HF dataset's rows with only the two columns."""
    keys = {"question_key": question_key, "answer_key": answer_key}

    def columns(source: str, field: str, names: list[str]) -> list[str]:
        missing = [key for key in (question_key, answer_key) if key not in names]
        if missing:
            raise ConfigError(
                "RLConfig", "env_args", f"{source} has no column {missing[0]!r} (it has {names}).",
                "set question_key / answer_key in env_args.",
            )  # fmt: skip
        return [question_key, answer_key]

    return RowFormat(
        what="problems",
        record=math_boxed.MathProblem,
        parse_line=functools.partial(math_boxed.parse_problem_line, **keys),
        parse_mapping=functools.partial(math_boxed.problem_from_json, **keys),
        hf_columns=columns,
    )


def _text(args: Mapping[str, EnvArg], key: str, default: str | None) -> str | None:
    value = args.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError("RLConfig", f"env_args[{key!r}]", f"must be a string, got {value!r}.")
    return value


def _data_config(config: RLConfig) -> DataConfig:
    args = config.env_args
    fraction = args.get("test_fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ConfigError("RLConfig", "env_args['test_fraction']", f"must be a number, got {fraction!r}.")
    texts = {key: _text(args, key, None) for key in _TEXT_KEYS}
    try:
        return DataConfig(
            train_data=texts["data"] or "",
            test_data=texts["test_data"],
            test_fraction=float(fraction),
            hf_split=texts["hf_split"],
            hf_test_split=texts["hf_test_split"],
            hf_subset=texts["hf_subset"],
            bad_rows=texts["bad_rows"] or "raise",  # type: ignore[arg-type]  # DataConfig checks the value
            seed=config.seed,
            base_model=config.base_model,
        )
    except ConfigError as error:
        field = {"train_data": "data"}.get(error.field, error.field)
        raise ConfigError("RLConfig", f"env_args[{field!r}]", error.problem, error.fix) from error


def problem_datasets(
    config: RLConfig, renderer: Renderer, options: ProblemOptions
) -> tuple[RLDataset, RLDataset | None]:
    """The training batches (``groups_per_batch`` problems each, enough epochs for ``steps``) and the held-out
    problems (``eval_groups`` per evaluation; ``None`` without held-out data) of ``env_args["data"]``."""
    data = _data_config(config)
    question_key = _text(config.env_args, "question_key", "problem") or "problem"
    answer_key = _text(config.env_args, "answer_key", "answer") or "answer"
    split = scan_split(data, problem_format(question_key, answer_key), [])
    if len(split.train) == 0:
        raise ConfigError(
            "RLConfig", "env_args['data']", f"{data.train_data} holds no usable problem ({split.skipped} skipped).",
            "check the data, question_key / answer_key and bad_rows.",
        )  # fmt: skip

    def make(row: SourcedRow[math_boxed.MathProblem]) -> EnvGroupBuilder:
        return math_boxed.builder(renderer, row.value, config.group_size, options)

    per_epoch = -(-len(split.train) // config.groups_per_batch)
    epochs = max(1, -(-config.steps // per_epoch))
    builders = streamed(split, one_by_one(make), item_type=EnvGroupBuilder, name="problems")
    train = ListRLDataset(builders, config.groups_per_batch, config.seed, epochs=epochs)
    held_out = [math_boxed.builder(renderer, row.value, config.group_size, options) for row in split.test]
    test = ListRLDataset(held_out, max(config.eval_groups, 1), config.seed + 7919) if held_out else None
    return train, test
