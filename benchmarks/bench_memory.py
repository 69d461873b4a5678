"""Peak memory (RSS high-water mark) of the local backend's training, each workload in a fresh process.

Workloads (``--only`` picks some; default all):

* ``load``: the embedded SmolLM2-135M-Instruct loaded and a LoRA training client built, nothing run (the floor
  the other figures stand on).
* ``sft``: one LoRA SFT step on the embedded model: batch 8 x 512 tokens (prompt halves weighted 0, completion
  halves 1), rank 32 on attention, MLP and unembedding, ``forward_backward("cross_entropy")`` + ``optim_step``.
* ``custom``: the same batch through ``forward_backward_custom`` (a weighted-NLL custom loss) + ``optim_step``.
* ``rl``: ``tinkerflow rl examples/rl_arithmetic.json`` with ``steps=STEPS`` (default 2) and evaluation off, in a
  temporary run directory.

Each child reports ``ru_maxrss`` of itself (``resource.getrusage(RUSAGE_SELF)``: the peak resident set, in a process
that did nothing else), and its wall time. Prints one line per workload and, last, one JSON object (MB).
``--dtype bf16`` and ``--return-freed-memory true|false|between_passes`` set the LocalBackend arguments of those
names for every workload (the RL command gets them as ``local.dtype`` / ``local.return_freed_memory``).
Usage: ``python benchmarks/bench_memory.py [--only sft rl] [--rl-steps N] [--chunk N] [--budget N] [--dtype fp32|bf16]
[--return-freed-memory MODE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from _common import ROOT, emit, run_child

BATCH, LENGTH, RANK = 8, 512, 32
#: ``--dtype`` choices: LocalOptions' names for them.
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
#: ``--return-freed-memory`` choices: the LocalBackend value each stands for.
FREED: dict[str, object] = {"true": True, "false": False, "between_passes": "between_passes"}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _training_client(chunk: int | None, budget: int | None, dtype: str, freed: str) -> object:
    import torch

    from tinkerflow.shell.backends.local import LocalBackend
    from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL

    options: dict[str, object] = {} if chunk is None else {"logprob_chunk_tokens": chunk}
    if budget is not None:
        options["max_tokens_per_batch"] = budget
    if dtype != "fp32":
        options["dtype"] = getattr(torch, DTYPES[dtype])
    if freed != "true":
        options["return_freed_memory"] = FREED[freed]
    backend = LocalBackend(checkpoint_dir=tempfile.mkdtemp(), device="cpu", **options)  # type: ignore[arg-type]  # older backends lack the option
    return backend.create_lora_training_client(EMBEDDED_MODEL, rank=RANK, seed=0).result()


def _sft_data(vocab: int) -> list[object]:
    import numpy as np

    from tinkerflow import Datum, ModelInput

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (BATCH, LENGTH + 1))
    weights = np.zeros(LENGTH, dtype=np.float32)
    weights[LENGTH // 2 :] = 1.0
    return [
        Datum(model_input=ModelInput.from_tokens(row[:-1]), target_tokens_T=row[1:], weights_T=weights)
        for row in tokens
    ]


def _child(arguments: argparse.Namespace) -> dict[str, float]:
    workload, chunk, budget, rl_steps = arguments.child, arguments.chunk, arguments.budget, arguments.rl_steps
    start = time.perf_counter()
    if workload == "rl":
        from tinkerflow.cli import main as cli_main

        with tempfile.TemporaryDirectory() as run_dir:
            status = cli_main(
                [
                    "rl",
                    str(ROOT / "examples" / "rl_arithmetic.json"),
                    f"steps={rl_steps}",
                    "eval_every=0",
                    "save_every=0",
                    f"run_dir={run_dir}/run",
                    f"local.dtype={DTYPES[arguments.dtype]}",
                    f"local.return_freed_memory={arguments.return_freed_memory}",
                ]
            )
        if status:
            raise SystemExit(f"tinkerflow rl exited with {status}")
        return {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - start}
    import torch

    from tinkerflow import AdamParams

    client = _training_client(chunk, budget, arguments.dtype, arguments.return_freed_memory)
    if workload == "load":
        return {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - start}
    data = _sft_data(client.get_info().vocab_size or 49152)  # type: ignore[attr-defined]
    loaded = time.perf_counter()
    if workload == "sft":
        out = client.forward_backward(data, "cross_entropy").result()  # type: ignore[attr-defined]
    else:

        def loss_fn(data: list[object], logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            total = sum(
                -(lp * torch.as_tensor(d.weights_T, dtype=lp.dtype)).sum()  # type: ignore[attr-defined]
                for d, lp in zip(data, logprobs, strict=True)
            )
            return torch.as_tensor(total) if not isinstance(total, torch.Tensor) else total, {}

        out = client.forward_backward_custom(data, loss_fn).result()  # type: ignore[attr-defined]
    client.optim_step(AdamParams(learning_rate=1e-5)).result()  # type: ignore[attr-defined]
    return {
        "peak_mb": _peak_mb(),
        "seconds": time.perf_counter() - loaded,
        "loss": float(out.metrics["loss:sum"]),
    }


def _run_child(workload: str, arguments: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", workload, "--rl-steps", str(arguments.rl_steps)]
    command += ["--dtype", arguments.dtype, "--return-freed-memory", arguments.return_freed_memory]
    if arguments.chunk is not None:
        command += ["--chunk", str(arguments.chunk)]
    if arguments.budget is not None:
        command += ["--budget", str(arguments.budget)]
    return run_child(command, workload)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=["load", "sft", "custom", "rl"])
    parser.add_argument("--rl-steps", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=None, help="LocalBackend(logprob_chunk_tokens=...)")
    parser.add_argument("--budget", type=int, default=None, help="LocalBackend(max_tokens_per_batch=...)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="base weights' dtype")
    parser.add_argument("--return-freed-memory", choices=sorted(FREED), default="true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(_child(arguments)))
        return
    figures: dict[str, object] = {"batch": BATCH, "length": LENGTH, "rank": RANK, "rl_steps": arguments.rl_steps}
    figures |= {"dtype": arguments.dtype, "return_freed_memory": arguments.return_freed_memory}
    if arguments.chunk is not None:
        figures["chunk"] = arguments.chunk
    if arguments.budget is not None:
        figures["budget"] = arguments.budget
    for workload in arguments.only:
        result = _run_child(workload, arguments)
        print(f"{workload}: peak RSS {result['peak_mb']:.0f} MB, {result['seconds']:.1f} s")
        figures[f"{workload}_peak_mb"] = round(result["peak_mb"], 1)
        figures[f"{workload}_seconds"] = round(result["seconds"], 2)
    figures["load_average"] = round(os.getloadavg()[0], 2)
    emit("memory", figures)


if __name__ == "__main__":
    main()
