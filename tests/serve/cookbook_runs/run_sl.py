"""Run the unmodified ``tinker_cookbook.supervised.train`` on the cookbook's bundled ``conversations.jsonl``."""

from __future__ import annotations

import asyncio
from importlib.resources import files

import _common


def main() -> None:
    parse = _common.parser(__doc__)
    parse.add_argument("--batch-size", type=int, default=4)
    parse.add_argument("--max-length", type=int, default=128)
    parse.add_argument("--max-steps", type=int, default=4)
    parse.add_argument("--shuffle-seed", type=int, default=0)
    args = parse.parse_args()
    _common.skip_pricing_download()

    from tinker_cookbook.renderers import TrainOnWhat
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(
        model_name_for_tokenizer=args.model,
        renderer_name=args.renderer,
        max_length=args.max_length,
        batch_size=args.batch_size,
        train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES,
    )
    config = train.Config(
        log_path=args.log_path,
        model_name=args.model,
        recipe_name="tinkerflow_serve_sl",
        renderer_name=args.renderer,
        dataset_builder=FromConversationFileBuilder(
            common_config=common,
            file_path=str(files("tinker_cookbook") / "example_data" / "conversations.jsonl"),
            test_size=0,
            shuffle_seed=args.shuffle_seed,
        ),
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=1,
        lora_rank=args.lora_rank,
        max_steps=args.max_steps,
        save_every=args.save_every,
        eval_every=0,
        infrequent_eval_every=0,
        wandb_project=None,
    )
    asyncio.run(train.main(config))


if __name__ == "__main__":
    main()
