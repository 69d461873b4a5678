"""The on-policy distillation config (``tinkerflow distill``): an attrs record, validated on construction.

A :class:`DistillConfig` becomes the :class:`~tinkerflow.rl.config.RLConfig` the RL loop runs
(:meth:`DistillConfig.rl_config`): the teacher is the KL reference (``kl_reference="model"`` or ``"checkpoint"``)
in ``kl_mode="distillation"``, and a rule broken by a shared field is reported as ``DistillConfig.<field>``.
"""

from __future__ import annotations

import attrs

from tinkerflow._validate import in_range, require_type
from tinkerflow.config import RunConfig, field_order
from tinkerflow.errors import ConfigError
from tinkerflow.rl.config import EnvArg, RLConfig, RLLossName

__all__ = ["DistillConfig"]

#: The RLConfig fields whose names differ here.
_RENAMED = {"kl_reference_model": "teacher_model", "kl_reference_path": "teacher_checkpoint"}


@attrs.frozen(
    kw_only=True,
    field_transformer=field_order(
        "teacher_model", "teacher_checkpoint", "prompts", "test_prompts", "env", "env_args", "base_model", "backend",
        "renderer", "group_size", "groups_per_batch", "steps", "learning_rate", "lora_rank", "max_tokens",
        "temperature", "loss", "kl_coef", "kl_discount", "substeps", "concurrency", "episode_timeout_s", "eval_every",
        "eval_groups", "save_every", "seed", "log_to", "run_dir", "evals", "keep_last", "keep_every", "local",
    ),
)  # fmt: skip
class DistillConfig(RunConfig):
    """On-policy distillation: the student (``base_model``, LoRA) samples, the teacher scores the samples, and each
    sampled token's advantage is ``-kl_coef * (log p_student - log p_teacher)`` (see docs/rl.md).

    Attributes:
        teacher_model: the teacher as a base model name (e.g. a larger model with the student's tokenizer).
        teacher_checkpoint: the teacher as trained weights: a sampler or state path (``tinker://``,
            ``local://``), a run directory (its latest weights) or a checkpoint folder. Exactly one of
            ``teacher_model`` and ``teacher_checkpoint``.
        prompts: (required) JSONL chat rows (``{"messages": [...]}``); each row's messages before its final
            assistant answer (if any) are a prompt the student answers; ``null`` with ``env``. Exactly one of
            ``prompts`` and ``env``.
        test_prompts: held-out chat rows (optional, with ``prompts``): ``eval_groups`` of them are answered before,
            every ``eval_every`` steps and after training, and their per-token reverse KL to the teacher is
            measured (logged as minus ``eval_reward_mean``: the held-out reward is ``-KL``).
        env: instead of prompts, an RL environment (as ``RLConfig.env``); its reward's group-centered advantages
            add to the KL term (the reward mixed with distillation), and its held-out reward is measured.
        env_args: the environment's options (with ``env``).
        group_size: answers per prompt (1 is allowed: the KL term needs no group).
        groups_per_batch: prompts per step.
        steps: optimizer steps.
        learning_rate: Adam learning rate (constant).
        max_tokens: most tokens per answer.
        temperature: sampling temperature (1: the sampled logprobs are the student's, as the KL estimate needs).
        loss: the policy-gradient loss (as ``RLConfig.loss``).
        kl_coef: weight of the reverse-KL advantage (> 0; the cookbook's default is 1).
        kl_discount: discount of the KL term's future sum (``None``: per token, as the cookbook's default 0).
        substeps: optimizer steps per batch.
        concurrency: episodes run at once.
        episode_timeout_s: wall-clock limit of one episode.
        eval_every: held-out measurement every this many steps (0: only before and after).
        eval_groups: held-out prompts per measurement.
        save_every: checkpoint every this many steps (0: only at the end).
        run_dir: where config, metrics, transcripts, plots and checkpoints go; an existing run there is resumed.
    """

    prompts: str | None
    teacher_model: str | None = None
    teacher_checkpoint: str | None = None
    test_prompts: str | None = None
    env: str | None = None
    env_args: dict[str, EnvArg] = attrs.field(factory=dict)
    group_size: int = 4
    groups_per_batch: int = 8
    steps: int = 20
    learning_rate: float = 1e-4
    max_tokens: int = 64
    temperature: float = 1.0
    loss: RLLossName = "importance_sampling"
    kl_coef: float = 1.0
    kl_discount: float | None = None
    substeps: int = 1
    concurrency: int = 64
    episode_timeout_s: float = 120.0
    eval_every: int = 5
    eval_groups: int = 8
    save_every: int = 10
    run_dir: str = "runs/distill"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        where = "DistillConfig"
        self._exactly_one(where, "teacher_model", "teacher_checkpoint", "the teacher")
        self._exactly_one(where, "prompts", "env", "what the student answers")
        require_type(self.test_prompts, (str, type(None)), where, "test_prompts")
        if self.test_prompts is not None and self.prompts is None:
            raise ConfigError(
                where,
                "test_prompts",
                "is set, but it has no effect with env (the environment has its own held-out problems).",
                "remove test_prompts, or use prompts instead of env.",
            )
        require_type(self.env_args, dict, where, "env_args")
        if self.env_args and self.env is None:
            raise ConfigError(where, "env_args", "is set, but it has no effect without env.", "remove env_args.")
        in_range(self.kl_coef, where, "kl_coef", low=0.0, low_open=True)
        try:
            self.rl_config()
        except ConfigError as error:  # a shared rule, reported under this config's name
            raise ConfigError(where, _RENAMED.get(error.field, error.field), error.problem, error.fix) from error

    def _exactly_one(self, where: str, first: str, second: str, what: str) -> None:
        values = (getattr(self, first), getattr(self, second))
        for field, value in ((first, values[0]), (second, values[1])):
            require_type(value, (str, type(None)), where, field)
            if value is not None and not value.strip():
                raise ConfigError(where, field, "is empty.", f"name {what}, or remove {field}.")
        if values[0] is None and values[1] is None:
            raise ConfigError(where, first, f"is missing: name {what} with {first} or {second}.", f"set {first}.")
        if values[0] is not None and values[1] is not None:
            raise ConfigError(where, second, f"is set together with {first}.", f"give only one of {first}, {second}.")

    def rl_config(self) -> RLConfig:
        """The RL run this distillation is: the teacher as the KL reference in ``distillation`` mode."""
        shared = {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if field.name in attrs.fields_dict(RLConfig) and field.name != "env"
        }
        return RLConfig(
            **shared,
            env=self.env if self.env is not None else "distill",
            kl_reference="model" if self.teacher_model is not None else "checkpoint",
            kl_reference_model=self.teacher_model,
            kl_reference_path=self.teacher_checkpoint,
            kl_mode="distillation",
            constant_groups="keep",
        )
