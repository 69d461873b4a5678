"""RL advantages + datum assembly: tinkerflow against tinker-cookbook 0.6.1 on the same trajectories, in one run.

Default workload: 1,000 groups x 16 trajectories x 512 tokens per trajectory, in two variants:

* ``single_turn``: a 256-token prompt (shared by the group) and a 256-token action;
* ``multi_turn``: ``--turns`` turns (default 4), each observation extending the previous sequence with new tokens,
  the 512 tokens split evenly between observation and action tokens; one turn in four is masked for a parse error.

Timed: tinkerflow ``compute_advantages`` + ``assemble_batch`` against the cookbook's ``compute_advantages`` +
``assemble_training_data(include_provenance=False)`` (building the inputs is not timed). Before timing, the outputs
are checked to hold the same tokens, logprobs and masks. The target (RL issue) is a ratio cookbook / tinkerflow of
at least 10.

Run: ``python benchmarks/bench_rl.py [--groups 1000] [--group-size 16] [--tokens 512] [--turns 4] [--repeats 3]``.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
from typing import Any

import numpy as np

from _common import best_of, emit
from tinkerflow.interop import datum_from_tinker
from tinkerflow.model_input import ModelInput
from tinkerflow.rl.advantages import compute_advantages
from tinkerflow.rl.assembly import assemble_batch
from tinkerflow.rl.types import Trajectory, TrajectoryGroup, Transition

VOCAB = 150_000


def make_groups(groups: int, group_size: int, tokens: int, turns: int, seed: int = 0) -> list[TrajectoryGroup]:
    """Synthetic groups: ``turns`` turns per trajectory, ``tokens`` positions split evenly between observation
    (the first observation holds the group's shared prompt) and action tokens."""
    rng = np.random.default_rng(seed)
    ob_per_turn = tokens // 2 // turns
    ac_per_turn = tokens // 2 // turns
    result: list[TrajectoryGroup] = []
    for g in range(groups):
        prompt = rng.integers(0, VOCAB, ob_per_turn)
        trajectories: list[Trajectory] = []
        for _ in range(group_size):
            sequence = prompt
            transitions: list[Transition] = []
            for turn in range(turns):
                if turn:
                    sequence = np.concatenate([sequence, rng.integers(0, VOCAB, ob_per_turn)])
                action = rng.integers(0, VOCAB, ac_per_turn)
                transitions.append(
                    Transition(
                        observation=ModelInput.from_tokens(sequence),
                        action_tokens_T=action,
                        action_logprobs_T=-rng.exponential(1.0, ac_per_turn).astype(np.float32),
                        reward=0.0,
                        done=turn == turns - 1,
                        mask_turn=turns > 1 and turn % 4 == 1,
                    )
                )
                sequence = np.concatenate([sequence, action])
            trajectories.append(Trajectory(transitions=tuple(transitions)))
        result.append(
            TrajectoryGroup(
                group_id=f"step0/{g}",
                trajectories=tuple(trajectories),
                member_indices=tuple(range(group_size)),
                group_rewards_G=tuple(float(r) for r in rng.integers(0, 2, group_size)),
                metrics_G=tuple({} for _ in range(group_size)),
            )
        )
    return result


def to_cookbook(groups: list[TrajectoryGroup]) -> list[Any]:
    """The same groups as tinker-cookbook records (``mask_turn`` -> the ``parse_error_masked`` metric)."""
    import tinker
    from tinker_cookbook.completers import TokensWithLogprobs
    from tinker_cookbook.rl import types as ct

    result = []
    for group in groups:
        trajectories = []
        for trajectory in group.trajectories:
            transitions = [
                ct.Transition(
                    ob=tinker.ModelInput.from_ints(t.observation.to_tokens().tolist()),
                    ac=TokensWithLogprobs(
                        tokens=t.action_tokens_T.tolist(), maybe_logprobs=t.action_logprobs_T.tolist()
                    ),
                    reward=t.reward,
                    episode_done=t.done,
                    metrics={ct.PARSE_ERROR_MASKED_METRIC_KEY: 1.0} if t.mask_turn else {},
                )
                for t in trajectory.transitions
            ]
            trajectories.append(ct.Trajectory(transitions=transitions, final_ob=tinker.ModelInput.from_ints([])))
        result.append(
            ct.TrajectoryGroup(
                trajectories_G=trajectories,
                final_rewards_G=list(group.group_rewards_G),
                metrics_G=list(group.metrics_G),
            )
        )
    return result


def run_variant(name: str, groups: list[TrajectoryGroup], repeats: int) -> dict[str, object]:
    from tinker_cookbook.rl.data_processing import assemble_training_data
    from tinker_cookbook.rl.data_processing import compute_advantages as cookbook_advantages

    cookbook_groups = to_cookbook(groups)

    def ours() -> object:
        return assemble_batch(groups, compute_advantages(groups))

    def cookbook() -> object:
        return assemble_training_data(cookbook_groups, cookbook_advantages(cookbook_groups), include_provenance=False)

    batch = assemble_batch(groups, compute_advantages(groups))
    expected, _ = assemble_training_data(
        cookbook_groups, cookbook_advantages(cookbook_groups), include_provenance=False
    )
    assert batch.size == len(expected)
    for index in range(0, batch.size, max(1, batch.size // 50)):  # spot-check 50 datums across the batch
        ours_datum, theirs = batch.datums[index], datum_from_tinker(expected[index])
        assert ours_datum.model_input == theirs.model_input
        for field in ("target_tokens_T", "logprobs_T", "mask_T"):
            assert np.array_equal(getattr(ours_datum, field), getattr(theirs, field)), field
        np.testing.assert_allclose(ours_datum.advantages_T, theirs.advantages_T, atol=1e-6)  # type: ignore[arg-type]
    del batch, expected
    gc.collect()

    ours_s = best_of(ours, repeats=repeats)
    gc.collect()
    cookbook_s = best_of(cookbook, repeats=repeats)
    gc.collect()
    trajectories = sum(len(g.trajectories) for g in groups)
    ratio = cookbook_s / ours_s
    print(
        f"{name}: tinkerflow {ours_s * 1e3:.0f} ms ({ours_s / trajectories * 1e6:.1f} us/trajectory), "
        f"cookbook {cookbook_s * 1e3:.0f} ms ({cookbook_s / trajectories * 1e6:.1f} us/trajectory), "
        f"ratio {ratio:.1f}x"
    )
    return {
        f"{name}_tinkerflow_ms": round(ours_s * 1e3, 1),
        f"{name}_cookbook_ms": round(cookbook_s * 1e3, 1),
        f"{name}_ratio": round(ratio, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512, help="positions per trajectory (observation + action)")
    parser.add_argument("--turns", type=int, default=4, help="turns of the multi-turn variant")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    figures: dict[str, object] = {
        "groups": args.groups,
        "group_size": args.group_size,
        "tokens": args.tokens,
        "turns": args.turns,
        "target_ratio": 10.0,
    }
    for name, turns in (("single_turn", 1), ("multi_turn", args.turns)):
        groups = make_groups(args.groups, args.group_size, args.tokens, turns)
        figures.update(run_variant(name, groups, args.repeats))
        del groups
        gc.collect()
    figures["within_target"] = all(
        float(figures[f"{name}_ratio"]) >= 10.0  # type: ignore[arg-type]  # values are the numbers set above
        for name in ("single_turn", "multi_turn")
    )
    emit("rl_advantages_assembly", figures)


if __name__ == "__main__":
    main()
