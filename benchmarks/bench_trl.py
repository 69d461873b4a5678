"""LocalBackend's LoRA SFT against TRL's ``SFTTrainer`` with peft, same data and settings, in one run.

Both sides train the embedded SmolLM2-135M-Instruct (CPU) with LoRA rank 32 / alpha 32 / no dropout on the
attention and MLP projections (not the unembedding: TRL refuses it), AdamW at a constant learning rate 1e-4,
batch 8 x 512 tokens of the same random token rows, the loss on the completion halves only (TRL:
``completion_mask`` with ``completion_only_loss``). Each side runs in a fresh process (so its peak RSS is its
own): ``STEPS`` optimizer steps, the first a warm-up; tokens/s is 8 x 512 over the median timed step (TRL:
``on_step_begin`` to ``on_step_end``, which holds its forward, backward and optimizer step). With ``--rounds N``
the sides alternate N times and each figure is the best round. Both sides keep their defaults for activation
memory: TRL's ``SFTConfig.gradient_checkpointing`` (True) and LocalBackend's ``checkpoint_layers`` (True);
``--no-checkpointing`` turns both off.

The TRL side needs ``trl`` (``pip install trl`` or the ``bench`` extra); without it the benchmark prints why and
reports tinkerflow's figures only. Last line: one JSON object (tokens/s, ratio LocalBackend / TRL, peak MB).
By default both sides load the base in bf16 (fp32 adapters on both: LocalBackend's own rule, peft's default;
TRL with ``bf16=True``): TRL's fastest setting on CPUs with bf16 dot products (on the 2-core Zen 4 development
machine TRL ran 1.3-1.5x faster in bf16 than in fp32), so the strongest baseline; and LocalBackend trims its heap
between passes (``return_freed_memory="between_passes"``), its setting that keeps this step under 1.5 GB in bf16.
``--dtype fp32`` runs both in fp32, ``--return-freed-memory true|false`` LocalBackend with that
``return_freed_memory``, ``--max-tokens-per-batch N`` with that pass size. Usage:
``python benchmarks/bench_trl.py [--steps N] [--rounds N] [--no-checkpointing] [--return-freed-memory MODE]
[--max-tokens-per-batch N] [--dtype fp32|bf16]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

from _common import emit, run_child

BATCH, LENGTH, RANK, ALPHA, LR = 8, 512, 32, 32, 1e-4
#: TRL (1.16) refuses an adapter on ``lm_head`` (its fused log-probabilities read ``lm_head.weight`` directly), so
#: both sides adapt the attention and MLP projections only (LocalBackend: ``train_unembed=False``).
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _rows(vocab: int) -> tuple[Any, Any]:
    """The token rows ``[BATCH, LENGTH + 1]`` and the completion mask ``[BATCH, LENGTH + 1]`` (second half)."""
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, vocab, (BATCH, LENGTH + 1))
    mask = np.zeros((BATCH, LENGTH + 1), dtype=np.int64)
    mask[:, LENGTH // 2 + 1 :] = 1
    return tokens, mask


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


#: ``--return-freed-memory`` choices and the ``LocalBackend(return_freed_memory=...)`` each stands for.
FREED: dict[str, bool | str] = {"true": True, "false": False, "between_passes": "between_passes"}


def _tinkerflow(
    steps: int, checkpointing: bool, return_freed: str = "true", pass_tokens: int = 2048, dtype: str = "fp32"
) -> dict[str, float]:
    import numpy as np

    from tinkerflow import AdamParams, Datum, ModelInput
    from tinkerflow.shell.backends.local import LocalBackend
    from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL

    backend = LocalBackend(
        checkpoint_dir=tempfile.mkdtemp(),
        device="cpu",
        checkpoint_layers=checkpointing,
        return_freed_memory=FREED[return_freed],
        max_tokens_per_batch=pass_tokens,
        dtype=_dtype(dtype),
    )
    client = backend.create_lora_training_client(EMBEDDED_MODEL, rank=RANK, seed=0, train_unembed=False).result()
    tokens, mask = _rows(client.get_info().vocab_size or 49152)
    data = [
        Datum(
            model_input=ModelInput.from_tokens(row[:-1]),
            target_tokens_T=row[1:],
            weights_T=weights[1:].astype(np.float32),
        )
        for row, weights in zip(tokens, mask, strict=True)
    ]
    adam = AdamParams(learning_rate=LR, weight_decay=0.0)
    times: list[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        client.forward_backward(data, "cross_entropy")
        client.optim_step(adam).result()
        times.append(time.perf_counter() - start)
    backend.close()
    return {"step_s": statistics.median(times[1:]), "peak_mb": _peak_mb()}


def _trl(steps: int, checkpointing: bool, dtype: str = "fp32") -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tinkerflow.shell.backends.local.models import embedded_model_dir

    times: list[float] = []

    class Timer(TrainerCallback):  # type: ignore[misc]  # transformers has no hints
        start = 0.0

        def on_step_begin(self, *args: object, **kwargs: object) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *args: object, **kwargs: object) -> None:
            times.append(time.perf_counter() - self.start)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()), dtype=_dtype(dtype))
        tokens, mask = _rows(int(model.config.vocab_size))
        # LENGTH input positions, as on the tinkerflow side (the model shifts the labels itself)
        dataset = Dataset.from_dict(
            {"input_ids": tokens[:, :LENGTH].tolist(), "completion_mask": mask[:, :LENGTH].tolist()}
        )
        with tempfile.TemporaryDirectory() as output_dir:
            config = SFTConfig(
                output_dir=output_dir,
                per_device_train_batch_size=BATCH,
                max_steps=steps,
                learning_rate=LR,
                lr_scheduler_type="constant",
                warmup_steps=0,
                weight_decay=0.0,
                optim="adamw_torch",
                max_length=LENGTH,
                completion_only_loss=True,
                gradient_checkpointing=checkpointing,
                bf16=dtype == "bf16",
                fp16=False,
                use_cpu=True,
                save_strategy="no",
                report_to=[],
                logging_steps=1,
                dataloader_num_workers=0,
                seed=0,
            )
            peft = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)
            trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, peft_config=peft, callbacks=[Timer()])
            trainer.train()
    return {"step_s": statistics.median(times[1:]), "peak_mb": _peak_mb()}


def _child(side: str, arguments: argparse.Namespace) -> dict[str, float]:
    steps, checkpointing = max(arguments.steps, 2), not arguments.no_checkpointing
    if side == "tinkerflow":
        freed, pass_tokens = arguments.return_freed_memory, arguments.max_tokens_per_batch
        result = _tinkerflow(steps, checkpointing, freed, pass_tokens, arguments.dtype)
    else:
        result = _trl(steps, checkpointing, arguments.dtype)
    result["tokens_per_s"] = BATCH * LENGTH / result["step_s"]
    return result


def _run(side: str, arguments: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", side, "--steps", str(arguments.steps), "--dtype", arguments.dtype]
    command += ["--max-tokens-per-batch", str(arguments.max_tokens_per_batch)]
    if arguments.no_checkpointing:
        command.append("--no-checkpointing")
    command += ["--return-freed-memory", arguments.return_freed_memory]
    return run_child(command, side)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per side (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument(
        "--return-freed-memory",
        choices=list(FREED),
        default="between_passes",
        help="LocalBackend's return_freed_memory (see docs/backends.md)",
    )
    parser.add_argument("--max-tokens-per-batch", type=int, default=2048, help="LocalBackend's padded tokens per pass")
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="bf16",
        help="base weights' dtype on both sides (bf16: fp32 adapters on both, TRL with bf16=True)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    steps, checkpointing = max(arguments.steps, 2), not arguments.no_checkpointing
    if arguments.child:
        print(json.dumps(_child(arguments.child, arguments)))
        return
    sides = ["tinkerflow"]
    if importlib.util.find_spec("trl") is None:
        print("TRL side skipped: trl is not installed (pip install trl, or the 'bench' extra).")
    else:
        sides.append("trl")
    best: dict[str, dict[str, float]] = {}
    for number in range(arguments.rounds):
        for side in sides if number % 2 == 0 else sides[::-1]:
            result = _run(side, arguments)
            load = os.getloadavg()[0]
            print(
                f"{side}: {result['tokens_per_s']:.0f} tokens/s, peak RSS {result['peak_mb']:.0f} MB (load {load:.1f})"
            )
            if side not in best or result["tokens_per_s"] > best[side]["tokens_per_s"]:
                best[side] = result
    figures: dict[str, object] = {
        "batch": BATCH,
        "length": LENGTH,
        "rank": RANK,
        "steps": steps,
        "rounds": arguments.rounds,
        "activation_checkpointing": checkpointing,
        "return_freed_memory": arguments.return_freed_memory,
        "max_tokens_per_batch": arguments.max_tokens_per_batch,
        "dtype": arguments.dtype,
        "load_average": round(os.getloadavg()[0], 2),
    }
    for side, result in best.items():
        figures[f"{side}_tokens_per_s"] = round(result["tokens_per_s"], 1)
        figures[f"{side}_peak_mb"] = round(result["peak_mb"], 1)
    if "trl" in best:
        figures["ratio"] = round(best["tinkerflow"]["tokens_per_s"] / best["trl"]["tokens_per_s"], 3)
        print(f"ratio (LocalBackend / TRL): {figures['ratio']}x")
    emit("trl", figures)


if __name__ == "__main__":
    main()
