"""Run the unmodified ``tinker_cookbook.rl.train`` with the cookbook's arithmetic environment ("What is x + y?")."""

from __future__ import annotations

import asyncio

import _common


def main() -> None:
    parse = _common.parser(__doc__)
    parse.add_argument("--groups", type=int, default=2, help="problems per step (the builder's batch_size)")
    parse.add_argument("--group-size", type=int, default=2, help="rollouts per problem")
    parse.add_argument("--steps", type=int, default=2, help="the builder's n_batches")
    parse.add_argument("--max-tokens", type=int, default=8)
    args = parse.parse_args()
    _common.skip_pricing_download()

    from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticDatasetBuilder
    from tinker_cookbook.rl import train

    config = train.Config(
        log_path=args.log_path,
        model_name=args.model,
        recipe_name="tinkerflow_serve_rl",
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
        wandb_project=None,
    )
    asyncio.run(train.main(config))


if __name__ == "__main__":
    main()
