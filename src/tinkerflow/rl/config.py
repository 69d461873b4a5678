"""The RL run configuration: an attrs record, validated on construction, (de)serialized with the one converter.

The fields every run shares are documented in :class:`tinkerflow.config.RunConfig`.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import attrs

from tinkerflow._validate import finite_float, in_range, int_at_least, non_empty_str, require_type
from tinkerflow.config import RunConfig, field_order
from tinkerflow.errors import ConfigError

__all__ = ["KL_REFERENCES", "KLMode", "KLReference", "RLConfig", "RLLossName", "RLMode"]

RLLossName: TypeAlias = Literal["importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce"]
KLReference: TypeAlias = Literal["initial", "base", "checkpoint", "model"]
KLMode: TypeAlias = Literal["penalty", "distillation"]
#: What ``RLConfig.kl_reference`` may name.
KL_REFERENCES: tuple[KLReference, ...] = ("initial", "base", "checkpoint", "model")
RLMode: TypeAlias = Literal["sync", "async"]
FailurePolicyName: TypeAlias = Literal["fail_fast", "retry", "drop"]
EnvArg: TypeAlias = int | float | str | bool


@attrs.frozen(
    kw_only=True,
    field_transformer=field_order(
        "env", "env_args", "base_model", "backend", "renderer", "group_size", "groups_per_batch", "steps",
        "learning_rate", "lora_rank", "max_tokens", "temperature", "loss", "clip_low", "clip_high", "dro_beta",
        "normalize_advantages", "constant_groups", "kl_coef", "kl_discount", "kl_reference", "kl_reference_path",
        "kl_reference_model", "kl_mode", "substeps", "mode", "max_staleness",
        "concurrency", "episode_timeout_s", "max_turns", "on_failure", "max_retries", "eval_every", "eval_groups",
        "save_every",
        "seed", "log_to", "run_dir", "evals", "keep_last", "keep_every", "local",
    ),
)  # fmt: skip
class RLConfig(RunConfig):
    """Reinforcement learning with verifiable rewards on a named environment.

    Attributes:
        env: environment name (``arithmetic``, ``guess_number``, ``math_boxed``); see the RL guide.
        env_args: keyword arguments of the environment's dataset factory (e.g. ``{"max_operand": 20}``).
        group_size: samples (environments) per group; advantages are centered within a group, so it must be at
            least 2 (a group of one has zero advantage whatever its reward: nothing would be learned).
        groups_per_batch: groups rolled out per step.
        steps: optimizer steps (one batch of groups each).
        learning_rate: Adam learning rate (constant, as in the cookbook's RL).
        max_tokens: most tokens per sampled action.
        temperature: sampling temperature of rollouts.
        loss: ``importance_sampling``, ``ppo``, ``cispo``, ``dro``, ``gspo`` (sequence-level ratio) or
            ``stable_reinforce``; the last two need a backend that implements them.
        clip_low / clip_high: ratio clipping thresholds of ``ppo``, ``cispo`` and ``gspo`` (with another loss, a
            value other than the default is an error: it would have no effect).
        dro_beta: the quadratic penalty of ``dro`` (with another loss, a value other than the default is an error).
        normalize_advantages: divide centered rewards by the group's standard deviation.
        constant_groups: ``keep`` groups whose members all got the same reward (zero advantage) or ``drop`` them;
            a step left with nothing to train on is skipped (no optimizer step).
        kl_coef: weight of the KL term against ``kl_reference`` (0 = off; costs a logprob pass per step).
        kl_discount: discount of the KL term's future sum (``None``: per token only).
        kl_reference: the policy the KL term compares with: ``initial`` (the weights the run starts from),
            ``base`` (the untrained ``base_model``), ``checkpoint`` (``kl_reference_path``) or ``model`` (the base
            model ``kl_reference_model``, e.g. a teacher). Its tokenizer must be the policy's.
        kl_reference_path: with ``kl_reference=checkpoint``: a sampler or state path (``tinker://``, ``local://``),
            a run directory (its latest weights) or a checkpoint folder.
        kl_reference_model: with ``kl_reference=model``: the reference's base model name.
        kl_mode: ``penalty`` (the RL penalty: advantages += ``kl_coef * (mean(d) - d)`` with ``d = lp - lp_ref``,
            centered on the batch mean) or ``distillation`` (on-policy distillation: advantages +=
            ``-kl_coef * d``, the negative per-token reverse KL to the reference, added to the environment's
            group-centered reward advantages; logged as ``teacher_kl``).
        substeps: optimizer steps per batch (the batch is split evenly).
        mode: ``sync`` (on-policy: batch ``n`` sampled with the weights after step ``n``) or ``async``
            (off-policy: batch ``n`` sampled with the weights after step ``n - max_staleness``, so sampling
            overlaps training).
        max_staleness: how many steps old the sampling weights may be in ``async`` mode (>= 1); has no effect in
            ``sync`` mode, where a value other than 1 is an error.
        concurrency: episodes run at once.
        episode_timeout_s: wall-clock limit of one episode, sampling and environment calls alike (counted from
            when it gets one of the ``concurrency`` slots); an episode past it, also one whose environment blocks,
            is stopped and counted as a failed episode (``failures/timeout``), handled by ``on_failure``.
        max_turns: most turns of one episode (``null``: no cap); an episode that reaches it without ending is
            truncated: kept with the rewards it got, and counted in the metric ``step/turn_cap``.
        on_failure: what a failed episode does: ``fail_fast`` (stop the run), ``retry`` (fresh environment, up to
            ``max_retries``), ``drop`` (leave it out of its group and count it).
        max_retries: retries per episode under ``retry``.
        eval_every: roll out the held-out problems every this many steps (0: only before and after).
        eval_groups: held-out groups per evaluation.
        save_every: checkpoint every this many steps (0: only at the end).
        run_dir: where config, metrics, transcripts, plots and checkpoints go; an existing run there is resumed.
    """

    env: str = "arithmetic"
    env_args: dict[str, EnvArg] = attrs.field(factory=dict)
    group_size: int = 8
    groups_per_batch: int = 8
    steps: int = 20
    learning_rate: float = 1e-4
    max_tokens: int = 16
    temperature: float = 1.0
    loss: RLLossName = "importance_sampling"
    clip_low: float = 0.8
    clip_high: float = 1.2
    dro_beta: float = 0.05
    normalize_advantages: bool = False
    constant_groups: Literal["keep", "drop"] = "keep"
    kl_coef: float = 0.0
    kl_discount: float | None = None
    kl_reference: KLReference = "initial"
    kl_reference_path: str | None = None
    kl_reference_model: str | None = None
    kl_mode: KLMode = "penalty"
    substeps: int = 1
    mode: RLMode = "sync"
    max_staleness: int = 1
    concurrency: int = 64
    episode_timeout_s: float = 120.0
    max_turns: int | None = None
    on_failure: FailurePolicyName = "drop"
    max_retries: int = 1
    eval_every: int = 5
    eval_groups: int = 8
    save_every: int = 10
    run_dir: str = "runs/rl"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        where = "RLConfig"
        non_empty_str(self.env, where, "env", "name an environment (see ENVIRONMENTS).")
        require_type(self.env_args, dict, where, "env_args")
        for key, value in self.env_args.items():
            require_type(key, str, where, "env_args")
            if not isinstance(value, bool):  # require_type never counts a bool as a number
                require_type(value, (int, float, str), where, f"env_args[{key!r}]")
        for field in ("group_size", "groups_per_batch", "steps", "max_tokens", "substeps", "concurrency"):
            int_at_least(getattr(self, field), where, field, 1)
        for field in ("max_retries", "eval_groups"):
            int_at_least(getattr(self, field), where, field, 0)
        if (
            self.group_size < 2 and self.kl_mode != "distillation"
        ):  # with either constant_groups policy: "keep" trains on zero advantages only
            raise ConfigError(
                where,
                "group_size",
                "is 1: advantages are centered within a group, so a group of one is constant (zero advantage) and "
                "nothing is learned.",
                "use group_size >= 2 (the cookbook uses 4 to 16).",
            )
        in_range(self.learning_rate, where, "learning_rate", low=0.0, low_open=True)
        in_range(self.temperature, where, "temperature", low=0.0)
        if self.loss not in get_args(RLLossName):
            raise ConfigError(
                where, "loss", f"unknown loss {self.loss!r}.", f"use one of {', '.join(get_args(RLLossName))}."
            )
        low = finite_float(self.clip_low, where, "clip_low")
        high = finite_float(self.clip_high, where, "clip_high")
        in_range(low, where, "clip_low", low=0.0, high=1.0)
        if high < 1.0:
            raise ConfigError(where, "clip_high", f"must be >= 1, got {high}.")
        in_range(self.dro_beta, where, "dro_beta", low=0.0)
        self._check_loss_options(where)
        require_type(self.normalize_advantages, bool, where, "normalize_advantages")
        if self.constant_groups not in ("keep", "drop"):
            raise ConfigError(where, "constant_groups", f"must be 'keep' or 'drop', got {self.constant_groups!r}.")
        in_range(self.kl_coef, where, "kl_coef", low=0.0)
        if self.kl_discount is not None:
            in_range(self.kl_discount, where, "kl_discount", low=0.0, high=1.0)
        self._check_kl(where)
        if self.mode not in ("sync", "async"):
            raise ConfigError(where, "mode", f"must be 'sync' or 'async', got {self.mode!r}.")
        require_type(self.max_staleness, int, where, "max_staleness")
        if self.mode == "async" and self.max_staleness < 1:
            raise ConfigError(where, "max_staleness", "must be >= 1 in async mode.", "use mode=sync for on-policy.")
        if self.mode == "sync" and self.max_staleness != 1:
            raise ConfigError(
                where,
                "max_staleness",
                f"is {self.max_staleness}, but it has no effect in sync mode (always on-policy).",
                "set mode=async to sample with older weights, or remove max_staleness.",
            )
        in_range(self.episode_timeout_s, where, "episode_timeout_s", low=0.0, low_open=True)
        int_at_least(self.max_turns, where, "max_turns", 1, allow_none=True)
        if self.on_failure not in ("fail_fast", "retry", "drop"):
            raise ConfigError(where, "on_failure", f"unknown policy {self.on_failure!r}.", "use fail_fast/retry/drop.")

    def _check_loss_options(self, where: str) -> None:
        """A loss option set away from its default under a loss that ignores it is an error (it would do nothing)."""
        clipped = ("ppo", "cispo", "gspo")
        users = {"clip_low": clipped, "clip_high": clipped, "dro_beta": ("dro",)}
        for field, losses in users.items():
            default = attrs.fields_dict(RLConfig)[field].default
            if self.loss not in losses and getattr(self, field) != default:
                raise ConfigError(
                    where,
                    field,
                    f"is {getattr(self, field)}, but it has no effect with loss={self.loss!r} (only "
                    f"{', '.join(losses)} {'reads' if len(losses) == 1 else 'read'} it).",
                    f"remove {field} (its default is {default}), or choose loss={losses[0]!r}.",
                )

    def _check_kl(self, where: str) -> None:
        """The KL reference and mode: each named reference has its one value, and nothing is set without effect."""
        if self.kl_reference not in KL_REFERENCES:
            raise ConfigError(
                where, "kl_reference", f"unknown reference {self.kl_reference!r}.", f"use one of {KL_REFERENCES}."
            )
        if self.kl_mode not in get_args(KLMode):
            raise ConfigError(
                where, "kl_mode", f"must be 'penalty' or 'distillation', got {self.kl_mode!r}.", "use one of those."
            )
        needs = {"kl_reference_path": "checkpoint", "kl_reference_model": "model"}
        for field, reference in needs.items():
            value = getattr(self, field)
            if value is not None and not non_empty_str(value, where, field, f"name the {reference}.").strip():
                raise ConfigError(where, field, "is blank.", f"name the reference {reference}, or remove {field}.")
            if self.kl_reference == reference and value is None:
                raise ConfigError(
                    where, field, f"is required with kl_reference={reference!r}.", f"set {field} (file or key=value)."
                )
            if self.kl_reference != reference and value is not None:
                raise ConfigError(
                    where,
                    field,
                    f"is set, but it has no effect with kl_reference={self.kl_reference!r}.",
                    f"remove it, or set kl_reference={reference!r}.",
                )
        if self.kl_coef == 0:
            changed = [
                field
                for field in ("kl_discount", "kl_reference", "kl_mode")
                if getattr(self, field) != attrs.fields_dict(RLConfig)[field].default
            ]
            if changed:
                raise ConfigError(
                    where,
                    changed[0],
                    f"is {getattr(self, changed[0])!r}, but it has no effect with kl_coef=0 (no KL term).",
                    "set kl_coef > 0, or remove it.",
                )
        if self.kl_mode == "distillation" and self.constant_groups == "drop":
            raise ConfigError(
                where,
                "constant_groups",
                "is 'drop', but with kl_mode='distillation' the KL term is the signal: a group whose rewards are "
                "all equal (every group of a reward-free prompt environment) still has something to learn.",
                "use constant_groups='keep'.",
            )

    @property
    def staleness(self) -> int:
        """How many steps old the weights that sample a batch are (0 in sync mode)."""
        return self.max_staleness if self.mode == "async" else 0
