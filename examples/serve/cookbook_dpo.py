"""Direct preference optimisation with the unmodified tinker-cookbook, against a local ``tinkerflow serve``.

Runs ``tinker_cookbook.preference.train_dpo`` on a JSONL of labeled comparisons, by default ``preferences.jsonl``
beside this script (8 short pairs written for this example). Each line is::

    {"comparison": {"prompt_conversation": [{"role": "user", "content": "..."}],
                    "completion_A": [{"role": "assistant", "content": "..."}],
                    "completion_B": [{"role": "assistant", "content": "..."}]},
     "label": "A"}                                              # or "B": the preferred completion

Start the server and export its variables first (see README.md in this folder), then::

    python examples/serve/cookbook_dpo.py                      # SmolLM2-135M-Instruct, 4 epochs of 8 pairs
    python examples/serve/cookbook_dpo.py --data my_prefs.jsonl --batch-size 16 --epochs 1

``dpo_loss``, ``accuracy`` and ``margin`` per step go to ``--log-path``/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

NEEDED = ("TINKER_BASE_URL", "TINKER_API_KEY", "HF_HOME", "HF_HUB_OFFLINE")


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="a model the server serves")
    parse.add_argument("--renderer", default="qwen3_instruct", help="cookbook renderer (ChatML for SmolLM2)")
    parse.add_argument("--log-path", default=f"/tmp/tinkerflow-cookbook/dpo-{time.strftime('%Y%m%d-%H%M%S')}")
    parse.add_argument("--data", default=str(pathlib.Path(__file__).with_name("preferences.jsonl")))
    parse.add_argument("--batch-size", type=int, default=8, help="comparison pairs per step")
    parse.add_argument("--epochs", type=int, default=4)
    parse.add_argument("--max-length", type=int, default=256)
    parse.add_argument("--learning-rate", type=float, default=1e-4)
    parse.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    parse.add_argument("--lora-rank", type=int, default=16)
    parse.add_argument("--save-every", type=int, default=0, help="periodic checkpoint every N steps (0: only final)")
    args = parse.parse_args()
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        sys.exit(
            f"set {', '.join(missing)} first: run `tinkerflow serve --install-tokenizers` and export what it prints"
        )

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
        recipe_name="tinkerflow_serve_example_dpo",
        renderer_name=args.renderer,
        dataset_builder=DPODatasetBuilderFromComparisons(
            common_config=common, comparison_builder=ComparisonBuilderFromJsonl(train_path=args.data)
        ),
        learning_rate=args.learning_rate,
        lr_schedule="constant",
        num_epochs=args.epochs,
        dpo_beta=args.beta,
        lora_rank=args.lora_rank,
        save_every=args.save_every,
        eval_every=0,
        infrequent_eval_every=0,
    )
    started = time.perf_counter()
    train_dpo.main(config)  # synchronous: it runs its own event loop
    print(f"done in {time.perf_counter() - started:.1f} s; metrics in {args.log_path}/metrics.jsonl")


if __name__ == "__main__":
    main()
