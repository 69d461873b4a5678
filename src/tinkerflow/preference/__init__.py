"""Preferences and DPO, pure core: comparison records, preference data layouts, DPO pairing, loss and gradient.

Start here::

    from tinkerflow import preference

    labeled, skipped = tinkerflow.shell.io.data.load_preference_jsonl("prefs.jsonl", policy="skip")  # shell: reads
    pairs = preference.dpo_pairs(labeled, renderer, max_length=2048, ties="drop")
    # shell: forward passes give per-token logprobs of pairs.chosen / pairs.rejected (policy and reference)
    pi_c = preference.sequence_logprobs(policy_chosen_logprobs, [d.weights_T for d in pairs.chosen])
    ...
    out = preference.dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    grads_c, grads_r = preference.dpo_token_gradients(out, chosen_weights, rejected_weights)

Numpy only: importing this package loads neither torch nor ``datasets`` (reading files and Hugging Face datasets
is :mod:`tinkerflow.shell.io.data`). ``DPOConfig`` is the DPO run's config; the loop is
``tinkerflow.shell.recipes.dpo.run_dpo`` (``tinkerflow dpo``).
See ``docs/preferences.md``.
"""

from tinkerflow.preference.config import DPOConfig
from tinkerflow.preference.data import (
    PREFERENCE_LAYOUTS,
    PreferenceFormatError,
    PreferenceLayout,
    detect_layout,
    labeled_comparison_from_json,
    labeled_comparison_to_json,
    parse_preference_line,
    preference_rows_from_hf,
)
from tinkerflow.preference.dpo import (
    DPOMetrics,
    DPOOutput,
    Float64_B,
    dpo_loss,
    dpo_token_gradients,
    sequence_logprobs,
    token_gradients,
)
from tinkerflow.preference.pairs import DPOPairs, DPOTrainOn, EmptyBatchError, TiePolicy, comparison_datums, dpo_pairs
from tinkerflow.preference.records import (
    COMPLETION_ROLES,
    LABELS,
    Comparison,
    Label,
    LabeledComparison,
    TieError,
)
from tinkerflow.preference.reward_model import (
    JUDGE_ANSWERS,
    JUDGE_INSTRUCTION,
    JudgeAnswer,
    JudgeMetrics,
    JudgeOrder,
    answer_probability,
    judge_answer,
    judge_conversation,
    judge_metrics,
    reward_model_conversations,
    tournament_pairs,
    win_fraction_rewards,
)

__all__ = [
    "COMPLETION_ROLES",
    "JUDGE_ANSWERS",
    "JUDGE_INSTRUCTION",
    "LABELS",
    "PREFERENCE_LAYOUTS",
    "Comparison",
    "DPOConfig",
    "DPOMetrics",
    "DPOOutput",
    "DPOPairs",
    "DPOTrainOn",
    "EmptyBatchError",
    "Float64_B",
    "JudgeAnswer",
    "JudgeMetrics",
    "JudgeOrder",
    "Label",
    "LabeledComparison",
    "PreferenceFormatError",
    "PreferenceLayout",
    "TieError",
    "TiePolicy",
    "answer_probability",
    "comparison_datums",
    "detect_layout",
    "dpo_loss",
    "dpo_pairs",
    "dpo_token_gradients",
    "judge_answer",
    "judge_conversation",
    "judge_metrics",
    "labeled_comparison_from_json",
    "labeled_comparison_to_json",
    "parse_preference_line",
    "preference_rows_from_hf",
    "reward_model_conversations",
    "sequence_logprobs",
    "token_gradients",
    "tournament_pairs",
    "win_fraction_rewards",
]
