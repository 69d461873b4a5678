"""Continuous batching of concurrent sample requests in the local sampler, on the embedded SmolLM2-135M-Instruct.

Three ways to serve the same N single-sample requests (default 64 prompts of 12 to 40 tokens, 32 new tokens each,
greedy, no stop), in the same run, the sides taking turns (a round runs each side once, in a rotated order):

* **batched**: the N ``sample`` calls submitted together to one ``LocalSamplingClient`` (as an RL loop or many
  ``tinkerflow serve`` clients do); its scheduler decodes them as one batch;
* **batched_row_by_row**: the same with a decode step's attention one call per row, as before consecutive rows of
  one key length shared a call (``invariant._decode_runs``): the gain of that grouping, in the same run;
* **batched_nondeterministic**: the same with ``LocalSamplingClient(..., deterministic=False)``: the model's own
  batched attention instead of the batch-invariant row attention (equal only up to rounding);
* **one at a time**: the same calls, each awaited before the next is sent (how a loop of ``.result()`` runs);
* **generate**: transformers' batched ``model.generate`` on the same prompts, left-padded, ``max_new_tokens`` =
  ``min_new_tokens`` = 32, greedy, with ``output_logits`` so it returns each token's logprob as the sampler does
  (also timed without logits, and from the main thread: see ``_in_thread``).

Each side's figure is its best round (tokens/s = N x new tokens / seconds). The greedy tokens of the sides are
compared (agreement per token: batched and one at a time are batch-invariant, so they agree on every token;
``generate`` runs other matrix shapes, where float rounding may flip a near-tie). Prints the figures and,
last, one JSON object. Usage: ``python benchmarks/bench_sampling.py [--requests 64] [--new-tokens 32]
[--repeats 2] [--model NAME] [--sides batched,generate,...]``; ``--model tiny-llama`` is a smoke run.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from _common import emit
from tinkerflow import ModelInput, SamplingParams
from tinkerflow.shell.backends.local import LocalBackend, LocalSamplingClient
from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL, embedded_model_dir

SIDES = (
    "batched",
    "batched_row_by_row",
    "batched_nondeterministic",
    "one_at_a_time",
    "generate",
    "generate_no_logits",
    "generate_main_thread",
)


def _prompts(count: int, vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, min(vocab, 32000), int(rng.integers(12, 41))) for _ in range(count)]


def _batched(sampler: LocalSamplingClient, prompts: list[np.ndarray], params: SamplingParams) -> list[list[int]]:
    futures = [sampler.sample(ModelInput.from_tokens(prompt), 1, params) for prompt in prompts]
    return [future.result().sequences[0].tokens_T.tolist() for future in futures]


def _row_by_row(run: Callable[[], list[list[int]]]) -> list[list[int]]:
    """``run()`` with the batch-invariant decode attention one call per row (the run grouping switched off)."""
    from tinkerflow.shell.backends.local import invariant

    grouping = invariant._runs_are_invariant
    invariant._runs_are_invariant = lambda *args: False  # type: ignore[assignment]  # a benchmark's A/B switch
    try:
        return run()
    finally:
        invariant._runs_are_invariant = grouping


def _one_at_a_time(sampler: LocalSamplingClient, prompts: list[np.ndarray], params: SamplingParams) -> list[list[int]]:
    return [
        sampler.sample(ModelInput.from_tokens(prompt), 1, params).result().sequences[0].tokens_T.tolist()
        for prompt in prompts
    ]


def _generate(model: Any, prompts: list[np.ndarray], new_tokens: int, *, logits: bool) -> list[list[int]]:
    width = max(prompt.size for prompt in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.size :] = torch.from_numpy(prompt)
        mask[row, width - prompt.size :] = 1
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            output_logits=logits,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
        new = out.sequences[:, width:]
        if logits:  # each sampled token's logprob, as the sampler returns
            steps = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1)
            steps.gather(2, new[..., None])
    return [row.tolist() for row in new]


def _in_thread(fn: Callable[[], list[list[int]]]) -> list[list[int]]:
    """``fn()`` on a fresh thread, as the sampler's engine thread runs: torch's CPU threading differs between the
    main thread and others (on a busy 2-core machine, 2 OpenMP threads in the main thread ran 2-3x slower than a
    worker thread), so ``generate`` is timed both ways."""
    result: list[list[list[int]]] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True))
    return same / sum(len(row) for row in a)


def _load_hf_model(name: str, backend: LocalBackend) -> Any:
    if name != EMBEDDED_MODEL:  # a tiny model: the backend's own random weights
        return backend.base_model(name).build()
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()), dtype=torch.float32)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--sides", default=",".join(SIDES), help="a comma-separated subset of " + ",".join(SIDES))
    arguments = parser.parse_args()
    count, new_tokens = arguments.requests, arguments.new_tokens
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    with LocalBackend(device="cpu") as backend:
        sampler = backend.create_sampling_client(base_model=arguments.model).result()
        assert isinstance(sampler, LocalSamplingClient)
        vocab = backend.base_model(arguments.model).vocab_size
        model = _load_hf_model(arguments.model, backend)
        prompts = _prompts(count, vocab)
        batch_sizes: list[int] = []
        sampler.scheduler.on_step = batch_sizes.append
        base = backend.base_model(arguments.model)
        fast = LocalSamplingClient(base, base.build(), "fast", deterministic=False)
        sides: dict[str, Callable[[], list[list[int]]]] = {
            "batched": lambda: _batched(sampler, prompts, params),
            "batched_row_by_row": lambda: _row_by_row(lambda: _batched(sampler, prompts, params)),
            "batched_nondeterministic": lambda: _batched(fast, prompts, params),
            "one_at_a_time": lambda: _one_at_a_time(sampler, prompts, params),
            "generate": lambda: _in_thread(lambda: _generate(model, prompts, new_tokens, logits=True)),
            "generate_no_logits": lambda: _in_thread(lambda: _generate(model, prompts, new_tokens, logits=False)),
            "generate_main_thread": lambda: _generate(model, prompts, new_tokens, logits=True),
        }
        sides = {name: side for name, side in sides.items() if name in arguments.sides.split(",")}
        warm = prompts[:2]
        _batched(sampler, warm, params), _generate(model, warm, new_tokens, logits=True)
        batch_sizes.clear()
        best = dict.fromkeys(sides, float("inf"))
        tokens: dict[str, list[list[int]]] = {}
        names = list(sides)
        for repeat in range(arguments.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                start = time.perf_counter()
                tokens[name] = sides[name]()
                seconds = time.perf_counter() - start
                best[name] = min(best[name], seconds)
                print(f"round {repeat}: {name} {seconds:.2f} s", flush=True)
        sampler.close()
    total = count * new_tokens
    rate = {name: total / seconds for name, seconds in best.items()}
    batched_steps = [size for size in batch_sizes if size > 1]
    ratios = {
        f"ratio_batched_vs_{name}": round(rate["batched"] / value, 2)
        for name, value in rate.items()
        if name != "batched" and "batched" in rate
    }
    agreement = {
        f"greedy_agreement_batched_vs_{name}": round(_agreement(tokens["batched"], tokens[name]), 4)
        for name in ("one_at_a_time", "generate", "batched_row_by_row")
        if name in tokens and "batched" in tokens
    }
    figures: dict[str, object] = {
        "model": arguments.model,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "requests": count,
        "new_tokens": new_tokens,
        "repeats": arguments.repeats,
        **{f"tokens_per_s_{name}": round(value, 1) for name, value in rate.items()},
        **ratios,
        "mean_decode_batch": round(float(np.mean(batched_steps)), 1) if batched_steps else 1.0,
        **agreement,
    }
    for name, value in rate.items():
        print(f"{name}: {value:.1f} tokens/s (best {best[name]:.2f} s)")
    emit("sampling", figures)


if __name__ == "__main__":
    main()
