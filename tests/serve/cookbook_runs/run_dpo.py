"""Run the unmodified ``tinker_cookbook.preference.train_dpo`` on a local JSONL of labeled comparisons."""

from __future__ import annotations

import pathlib

import _common

PREFERENCES = pathlib.Path(__file__).with_name("preferences.jsonl")


def main() -> None:
    parse = _common.parser(__doc__)
    parse.add_argument("--data", default=str(PREFERENCES), help="comparisons JSONL (default: the bundled one)")
    parse.add_argument("--batch-size", type=int, default=4, help="comparison pairs per step")
    parse.add_argument("--max-length", type=int, default=128)
    parse.add_argument("--epochs", type=int, default=1)
    parse.add_argument("--max-steps", type=int, default=None)
    parse.add_argument("--beta", type=float, default=0.1)
    args = parse.parse_args()

    from tinker_cookbook.preference import train_dpo
    from tinker_cookbook.preference.dpo_datasets import DPODatasetBuilderFromComparisons
    from tinker_cookbook.preference.preference_datasets import ComparisonBuilderFromJsonl
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=args.model,
        renderer_name=args.renderer,
        max_length=args.max_length,
        batch_size=args.batch_size,
    )
    config = train_dpo.Config(
        log_path=args.log_path,
        model_name=args.model,
        recipe_name="tinkerflow_serve_dpo",
        renderer_name=args.renderer,
        dataset_builder=DPODatasetBuilderFromComparisons(
            common_config=common, comparison_builder=ComparisonBuilderFromJsonl(train_path=args.data)
        ),
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=args.epochs,
        dpo_beta=args.beta,
        lora_rank=args.lora_rank,
        max_steps=args.max_steps,
        save_every=args.save_every,
        eval_every=0,
        infrequent_eval_every=0,
        wandb_project=None,
    )
    train_dpo.main(config)  # synchronous: it runs its own event loop


if __name__ == "__main__":
    main()
