"""Supervised fine-tuning with the unmodified tinker-cookbook, against a local ``tinkerflow serve``.

Runs ``tinker_cookbook.supervised.train`` on the conversations file bundled with the cookbook
(``tinker_cookbook/example_data/conversations.jsonl``, 128 chats; an epoch is 16 steps of 8). Start the server and
export its variables first (see README.md in this folder), then::

    python examples/serve/cookbook_sl.py                       # SmolLM2-135M-Instruct, 1 epoch = 16 steps
    python examples/serve/cookbook_sl.py --epochs 2 --log-path /tmp/my-sl-run

The run's metrics (``train_mean_nll`` per step), checkpoints and logs are written to ``--log-path``. A log path that
already holds a ``checkpoints.jsonl`` makes the cookbook resume from it, so each run gets a fresh folder by default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from importlib.resources import files

NEEDED = ("TINKER_BASE_URL", "TINKER_API_KEY", "HF_HOME", "HF_HUB_OFFLINE")


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="a model the server serves")
    parse.add_argument("--renderer", default="qwen3_instruct", help="cookbook renderer (ChatML for SmolLM2)")
    parse.add_argument("--log-path", default=f"/tmp/tinkerflow-cookbook/sl-{time.strftime('%Y%m%d-%H%M%S')}")
    parse.add_argument("--epochs", type=int, default=1, help="passes over the 128 conversations")
    parse.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parse.add_argument("--batch-size", type=int, default=8, help="conversations per step (128 // it steps an epoch)")
    parse.add_argument("--max-length", type=int, default=256, help="tokens per conversation (longer ones are cut)")
    parse.add_argument("--learning-rate", type=float, default=5e-4)
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
        recipe_name="tinkerflow_serve_example_sl",
        renderer_name=args.renderer,
        dataset_builder=FromConversationFileBuilder(
            common_config=common, file_path=str(files("tinker_cookbook") / "example_data" / "conversations.jsonl")
        ),
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=args.epochs,
        lora_rank=args.lora_rank,
        max_steps=args.max_steps,
        save_every=args.save_every,
        eval_every=0,
        infrequent_eval_every=0,
    )
    started = time.perf_counter()
    asyncio.run(train.main(config))
    print(f"done in {time.perf_counter() - started:.1f} s; metrics in {args.log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
