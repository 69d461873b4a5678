"""LocalBackend vs a plain hand-written transformers + peft loop, on the embedded SmolLM2-135M-Instruct.

Two workloads, each done the same way by both sides in the same run (interleaved, best of N after a warm-up):

* LoRA SFT step: batch 8 x 128 tokens (prompt halves weighted 0, completion halves 1), rank 32 on attention, MLP
  and unembedding, summed weighted NLL, backward, AdamW step. Both return the loss and every target logprob.
* Sampling: 8 samples x 64 new tokens from one 32-token prompt at temperature 1, with each sampled token's logprob.
  The hand-written side calls ``model.generate`` on the LoRA model (``output_logits`` for the logprobs), as a
  training loop that keeps training after sampling would; a second figure compares with generating from a
  merged copy of the weights.

Prints the figures and, last, one JSON object with them (tokens/s and LocalBackend / hand-written ratios).
Usage: ``python benchmarks/bench_backend.py [--repeats N]``.

``--lora-layer`` instead times one adapted layer, forward + backward over 1024 positions, with tinkerflow's
``LoraLinear`` and with peft's own LoRA layer (same weights, so the outputs are compared too) at SmolLM2's shapes:
the unembedding (576 -> 49152), an MLP projection (576 -> 1536) and an attention projection (576 -> 576). This is
the measurement behind keeping ``LoraLinear`` (docs/backends.md).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from _common import emit
from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams
from tinkerflow.shell.backends.local import LocalBackend
from tinkerflow.shell.backends.local.lora import ATTENTION_MODULES, LORA_ALPHA, MLP_MODULES, UNEMBED_MODULES, LoraLinear
from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL, embedded_model_dir

BATCH, LENGTH, RANK = 8, 128, 32
SAMPLES, NEW_TOKENS, PROMPT = 8, 64, 32
ADAM = AdamParams(learning_rate=1e-5)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _interleaved_best(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` timings of each, after a warm-up, alternating which goes first (no order bias)."""
    a(), b()
    best_a = best_b = float("inf")
    for repeat in range(repeats):
        if repeat % 2:
            best_b = min(best_b, _timed(b))
            best_a = min(best_a, _timed(a))
        else:
            best_a = min(best_a, _timed(a))
            best_b = min(best_b, _timed(b))
    return best_a, best_b


def _batch(rng: np.random.Generator, vocab: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens = rng.integers(0, vocab, (BATCH, LENGTH + 1))
    weights = np.zeros((BATCH, LENGTH), dtype=np.float32)
    weights[:, LENGTH // 2 :] = 1.0
    return tokens[:, :-1], tokens[:, 1:], weights


class HandWritten:
    """What one writes by hand with transformers + peft: the same LoRA, loss, optimizer and sampling."""

    def __init__(self) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = AutoModelForCausalLM.from_pretrained(str(embedded_model_dir()), dtype=torch.float32)
            config = LoraConfig(
                r=RANK,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.0,
                target_modules=[*ATTENTION_MODULES, *MLP_MODULES, *UNEMBED_MODULES],
            )
            torch.manual_seed(0)
            self.model: Any = get_peft_model(base, config)
        self.model.eval()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=ADAM.learning_rate, betas=(ADAM.beta1, ADAM.beta2), eps=ADAM.eps)

    def sft_step(self, ids: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> tuple[float, np.ndarray]:
        logits = self.model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (nll * weights.flatten()).sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.detach()), (-nll).detach().view(ids.shape).numpy()

    def sample(self, model: Any, prompt: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=SAMPLES,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
        new = out.sequences[:, prompt.shape[1] :]
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1)
        return new.numpy(), logprobs.gather(2, new[..., None])[..., 0].numpy()


def _lora_layers(shape: tuple[int, int], rank: int = 8) -> tuple[torch.nn.Module, torch.nn.Module]:
    """One frozen linear layer adapted twice: tinkerflow's ``LoraLinear`` and peft's layer, with equal weights."""
    from peft import LoraConfig, inject_adapter_in_model

    base = torch.nn.Linear(*shape, bias=False).requires_grad_(False)
    ours = LoraLinear(base, rank, LORA_ALPHA, torch.Generator().manual_seed(0))
    holder = torch.nn.Module()
    holder.add_module("lm_head", base)
    theirs = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=LORA_ALPHA, target_modules=["lm_head"]), holder)
    layer = cast("torch.nn.Module", theirs.lm_head)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(ours.lora_A.weight)
        layer.lora_B["default"].weight.normal_()
        ours.lora_B.weight.copy_(layer.lora_B["default"].weight)
    return ours, layer


def lora_layer_benchmark(repeats: int) -> None:
    """``LoraLinear`` vs peft's LoRA layer: forward + backward of one layer, best of ``repeats`` (interleaved)."""
    figures: dict[str, object] = {}
    for label, shape in (("unembed", (576, 49152)), ("mlp", (576, 1536)), ("attention", (576, 576))):
        ours, theirs = _lora_layers(shape)
        x = torch.randn(1024, shape[0])
        difference = float((ours(x) - theirs(x)).abs().max().detach())

        def step(layer: torch.nn.Module, x: torch.Tensor = x) -> Callable[[], object]:
            return lambda: layer(x).square().sum().backward()

        best_ours, best_peft = _interleaved_best(step(ours), step(theirs), repeats)
        timing = f"LoraLinear {best_ours * 1e3:.1f} ms, peft {best_peft * 1e3:.1f} ms"
        print(f"{label} {shape}: {timing}, max |diff| {difference:.1e}")
        figures[f"{label}_ms"] = {"lora_linear": round(best_ours * 1e3, 1), "peft": round(best_peft * 1e3, 1)}
        figures[f"{label}_max_abs_diff"] = difference
    emit("lora_layer", figures)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-layer", action="store_true", help="time LoraLinear against peft's LoRA layer")
    arguments = parser.parse_args()
    repeats = arguments.repeats
    if arguments.lora_layer:
        lora_layer_benchmark(max(repeats, 10))
        return
    torch.manual_seed(0)
    with (
        tempfile.TemporaryDirectory() as checkpoints,
        LocalBackend(checkpoint_dir=checkpoints, device="cpu") as backend,
    ):
        client = backend.create_lora_training_client(EMBEDDED_MODEL, rank=RANK, seed=0).result()
        vocab = client.get_info().vocab_size or 49152
        hand = HandWritten()
        ids, targets, weights = _batch(np.random.default_rng(0), vocab)
        data = [
            Datum(model_input=ModelInput.from_tokens(ids[i]), target_tokens_T=targets[i], weights_T=weights[i])
            for i in range(BATCH)
        ]
        ids_t, targets_t, weights_t = (torch.from_numpy(np.array(x)) for x in (ids, targets, weights))

        def local_step() -> None:
            client.forward_backward(data, "cross_entropy")
            client.optim_step(ADAM).result()

        def hand_step() -> None:
            hand.sft_step(ids_t, targets_t, weights_t)

        local_sft, hand_sft = _interleaved_best(local_step, hand_step, repeats)
        tokens = BATCH * LENGTH
        print(f"SFT step {BATCH}x{LENGTH}: local {local_sft:.3f}s, hand-written {hand_sft:.3f}s")

        sampler = client.save_weights_and_get_sampling_client().result()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns that merging into tied embeddings unties them
            merged = copy.deepcopy(hand.model).merge_and_unload()
        prompt = np.random.default_rng(1).integers(0, vocab, PROMPT)
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=1.0, seed=0)
        prompt_t = torch.from_numpy(prompt)[None]

        def local_sample() -> None:
            response = sampler.sample(ModelInput.from_tokens(prompt), SAMPLES, params).result()
            assert all(s.tokens_T.size == NEW_TOKENS for s in response.sequences)

        local_sampling, hand_sampling = _interleaved_best(
            local_sample, lambda: hand.sample(hand.model, prompt_t, 0), repeats
        )
        hand.sample(merged, prompt_t, 0)  # warm-up
        hand_merged = min(_timed(lambda: hand.sample(merged, prompt_t, 0)) for _ in range(repeats))
        sampled = SAMPLES * NEW_TOKENS
        print(
            f"sampling {SAMPLES}x{NEW_TOKENS}: local {local_sampling:.3f}s, hand-written {hand_sampling:.3f}s "
            f"(merged weights {hand_merged:.3f}s)"
        )
        figures = {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "sft_tokens_per_s_local": round(tokens / local_sft, 1),
            "sft_tokens_per_s_hand": round(tokens / hand_sft, 1),
            "sft_ratio": round(hand_sft / local_sft, 3),
            "sample_tokens_per_s_local": round(sampled / local_sampling, 1),
            "sample_tokens_per_s_hand": round(sampled / hand_sampling, 1),
            "sample_ratio": round(hand_sampling / local_sampling, 3),
            "sample_tokens_per_s_hand_merged": round(sampled / hand_merged, 1),
            "sample_ratio_vs_merged": round(hand_merged / local_sampling, 3),
            "repeats": repeats,
        }
        print(f"ratios (LocalBackend / hand-written): SFT {figures['sft_ratio']}x, sampling {figures['sample_ratio']}x")
    emit("backend", figures)


if __name__ == "__main__":
    main()
