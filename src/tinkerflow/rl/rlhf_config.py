"""The RLHF config (``tinkerflow rlhf``): one flat record for both stages, validated on construction.

:meth:`RLHFConfig.reward_model_config` is the judge's SL run (in ``run_dir/reward_model``) and
:meth:`RLHFConfig.policy_config` the policy's RL run (in ``run_dir/policy``) that
:func:`tinkerflow.shell.recipes.rlhf.run_rlhf` trains; a rule broken by a shared field is reported as
``RLHFConfig.<field>``.
"""

from __future__ import annotations

import pathlib

import attrs

from tinkerflow._validate import in_range, int_at_least, non_empty_str, require_type
from tinkerflow.config import RunConfig, SLConfig, field_order
from tinkerflow.errors import ConfigError
from tinkerflow.rl.config import RLConfig, RLLossName

__all__ = ["RLHFConfig"]

#: SLConfig fields of the reward model, by their name here.
_RM_FIELDS = {
    "rm_batch_size": "batch_size",
    "rm_epochs": "epochs",
    "rm_max_steps": "max_steps",
    "rm_learning_rate": "learning_rate",
    "rm_max_length": "max_length",
}


@attrs.frozen(
    kw_only=True,
    field_transformer=field_order(
        "comparisons", "test_comparisons", "prompts", "base_model", "backend", "renderer", "lora_rank",
        "rm_batch_size", "rm_epochs", "rm_max_steps", "rm_learning_rate", "rm_max_length", "both_orders",
        "group_size", "groups_per_batch", "steps", "learning_rate", "max_tokens", "temperature", "loss", "kl_coef",
        "format_coef", "opponents", "eval_limit", "eval_every", "save_every", "seed", "log_to", "run_dir", "evals",
        "keep_last", "keep_every", "local",
    ),
)  # fmt: skip
class RLHFConfig(RunConfig):
    """RLHF in two stages: a pairwise judge trained with SL on labelled comparisons, then RL of the policy whose
    reward is its win fraction in tournaments the judge decides (see docs/rl.md and ``shell/recipes/rlhf.py``).

    Attributes:
        comparisons: labelled comparisons (JSONL, the preference rows DPO reads) the judge learns from.
        test_comparisons: held-out comparisons: the judge's accuracy and the policy's win rate against their
            chosen completions, before and after (``None``: none measured).
        prompts: JSONL chat rows whose messages before a final assistant answer are the policy's prompts
            (``None``: the distinct prompts of ``comparisons``).
        rm_batch_size / rm_epochs / rm_max_steps / rm_learning_rate / rm_max_length: the judge's SL run (as
            ``SLConfig``'s ``batch_size``, ``epochs``, ``max_steps``, ``learning_rate``, ``max_length``).
        both_orders: train the judge on both presentation orders of each comparison.
        group_size: answers per prompt (they play a tournament; >= 2).
        groups_per_batch: prompts per RL step.
        steps: RL steps.
        learning_rate: the policy's Adam learning rate.
        max_tokens: most tokens per answer.
        temperature: sampling temperature of the policy.
        loss: the policy-gradient loss (as ``RLConfig.loss``).
        kl_coef: KL penalty towards the policy's initial weights (0: off).
        format_coef: penalty of answers that do not end on the stop sequence.
        opponents: matches per answer (``None``: all pairs of the group).
        eval_limit: held-out comparisons judged for accuracy and win rate.
        eval_every / save_every: of both stages.
        run_dir: ``reward_model/`` and ``policy/`` run directories go here; a rerun resumes (a finished judge is
            reused).
    """

    comparisons: str
    test_comparisons: str | None = None
    prompts: str | None = None
    rm_batch_size: int = 8
    rm_epochs: int = 1
    rm_max_steps: int | None = None
    rm_learning_rate: float | None = None
    rm_max_length: int = 512
    both_orders: bool = True
    group_size: int = 4
    groups_per_batch: int = 4
    steps: int = 10
    learning_rate: float = 1e-4
    max_tokens: int = 64
    temperature: float = 1.0
    loss: RLLossName = "importance_sampling"
    kl_coef: float = 0.0
    format_coef: float = 0.0
    opponents: int | None = None
    eval_limit: int = 64
    eval_every: int = 5
    save_every: int = 10
    run_dir: str = "runs/rlhf"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        where = "RLHFConfig"
        non_empty_str(self.comparisons, where, "comparisons", "give a JSONL file of labelled comparisons.")
        for field in ("test_comparisons", "prompts"):
            if getattr(self, field) is not None:
                non_empty_str(getattr(self, field), where, field, f"give a JSONL file, or remove {field}.")
        require_type(self.both_orders, bool, where, "both_orders")
        in_range(self.format_coef, where, "format_coef", low=0.0)
        int_at_least(self.opponents, where, "opponents", 1, allow_none=True)
        int_at_least(self.eval_limit, where, "eval_limit", 1)
        for make in (self.reward_model_config, self.policy_config):
            try:
                make()
            except ConfigError as error:  # a shared rule, reported under this config's name
                field = {value: key for key, value in _RM_FIELDS.items()}.get(error.field, error.field)
                raise ConfigError(where, field, error.problem, error.fix) from error

    def _shared(self, cls: type) -> dict[str, object]:
        """The fields both records have, but the stage's own (``evals`` are the policy's)."""
        names = attrs.fields_dict(cls)
        own = ("run_dir", "learning_rate", "max_length") + (("evals",) if cls is SLConfig else ())
        return {
            field.name: getattr(self, field.name)
            for field in attrs.fields(type(self))
            if field.name in names and field.name not in own
        }

    def reward_model_config(self) -> SLConfig:
        """The judge's SL run (``train_data`` labels the in-memory judge conversations made from
        ``comparisons``)."""
        rm = {target: getattr(self, name) for name, target in _RM_FIELDS.items()}
        return SLConfig(
            **self._shared(SLConfig),  # type: ignore[arg-type]  # attrs checks every value
            **rm,
            train_data=f"<memory:rlhf judge of {self.comparisons}>",
            train_on="last_assistant_message",
            num_samples_shown=0,
            run_dir=str(pathlib.PurePath(self.run_dir) / "reward_model"),
        )

    def policy_config(self) -> RLConfig:
        """The policy's RL run (``env="rlhf"`` only names it)."""
        return RLConfig(
            **self._shared(RLConfig),  # type: ignore[arg-type]  # attrs checks every value
            env="rlhf",
            learning_rate=self.learning_rate,
            eval_groups=0,
            run_dir=str(pathlib.PurePath(self.run_dir) / "policy"),
        )
