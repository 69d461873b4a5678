"""Reinforcement learning with the unmodified tinker-cookbook, against a local ``tinkerflow serve``.

Runs ``tinker_cookbook.rl.train`` with the cookbook's arithmetic environment
(``tinker_cookbook.recipes.math_rl.arithmetic_env``: "What is x + y?", reward 1 for the right number, -0.1 when the
answer does not end with the chat's end-of-turn token). Each step samples ``--groups`` problems x ``--group-size``
answers on the server, then trains on them with the importance-sampling loss. Start the server and export its
variables first (see README.md in this folder), then::

    python examples/serve/cookbook_rl.py                       # SmolLM2-135M-Instruct, 4 steps
    python examples/serve/cookbook_rl.py --steps 20 --groups 8 --group-size 8

Per-step rewards (``env/all/reward/total``, ``env/all/correct``, ``env/all/format``) go to ``--log-path``/metrics.jsonl,
sampled answers to ``--log-path``/iteration_*/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

NEEDED = ("TINKER_BASE_URL", "TINKER_API_KEY", "HF_HOME", "HF_HUB_OFFLINE")


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="a model the server serves")
    parse.add_argument("--renderer", default="qwen3_instruct", help="cookbook renderer (ChatML for SmolLM2)")
    parse.add_argument("--log-path", default=f"/tmp/tinkerflow-cookbook/rl-{time.strftime('%Y%m%d-%H%M%S')}")
    parse.add_argument("--steps", type=int, default=4)
    parse.add_argument("--groups", type=int, default=4, help="problems per step")
    parse.add_argument("--group-size", type=int, default=4, help="sampled answers per problem")
    parse.add_argument("--max-tokens", type=int, default=8, help="longest answer sampled")
    parse.add_argument("--learning-rate", type=float, default=1e-4)
    parse.add_argument("--lora-rank", type=int, default=16)
    parse.add_argument("--save-every", type=int, default=0, help="periodic checkpoint every N steps (0: only final)")
    args = parse.parse_args()
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        sys.exit(
            f"set {', '.join(missing)} first: run `tinkerflow serve --install-tokenizers` and export what it prints"
        )

    # The cookbook downloads a model price list once per process (to log costs); there is nothing to price here.
    import tinker_cookbook.utils.cost_estimation as cost_estimation

    cost_estimation._pricing_fetched = True

    from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticDatasetBuilder
    from tinker_cookbook.rl import train

    config = train.Config(
        log_path=args.log_path,
        model_name=args.model,
        recipe_name="tinkerflow_serve_example_rl",
        renderer_name=args.renderer,
        dataset_builder=ArithmeticDatasetBuilder(
            batch_size=args.groups,
            group_size=args.group_size,
            n_batches=args.steps,
            model_name_for_tokenizer=args.model,
            renderer_name=args.renderer,
            include_fewshot=True,
        ),
        learning_rate=args.learning_rate,
        max_tokens=args.max_tokens,
        lora_rank=args.lora_rank,
        eval_every=0,
        save_every=args.save_every,
    )
    started = time.perf_counter()
    asyncio.run(train.main(config))
    print(f"done in {time.perf_counter() - started:.1f} s; metrics in {args.log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
