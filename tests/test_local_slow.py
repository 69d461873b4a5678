"""The real embedded model (SmolLM2-135M-Instruct): a few LoRA steps, a save/load, and sampling. Marked slow."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tinkerflow import AdamParams, ModelInput, SamplingParams
from tinkerflow.supervised import supervised_datum

pytest.importorskip("peft")
pytest.importorskip("gguf")

from tinkerflow.shell.backends.local import LocalBackend
from tinkerflow.shell.backends.local.models import EMBEDDED_MODEL


@pytest.mark.slow
def test_embedded_model_lora_steps_and_sampling(tmp_path: pathlib.Path) -> None:
    with LocalBackend(checkpoint_dir=tmp_path, device="cpu") as backend:
        client = backend.create_lora_training_client(EMBEDDED_MODEL, rank=8, seed=0).result()
        info = client.get_info()
        assert (info.vocab_size, info.max_context, info.lora_rank) == (49152, 8192, 8)
        tokenizer = client.get_tokenizer()
        start, end = tokenizer.token_id("<|im_start|>"), tokenizer.token_id("<|im_end|>")
        # control tokens by id (encode keeps their spellings as plain text); the same ids as the chat template's
        prompt = [start, *tokenizer.encode("user\nWhat is the capital of France?"), end]
        prompt += [*tokenizer.encode("\n"), start, *tokenizer.encode("assistant\n")]
        assert tokenizer.decode(prompt) == (
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        )
        assert tokenizer.encode("<|im_end|>") != [end]
        base = backend.create_sampling_client(base_model=EMBEDDED_MODEL).result()
        greedy = SamplingParams(max_tokens=12, temperature=0.0, stop_strings=("<|im_end|>",))
        answer = tokenizer.decode(base.sample(ModelInput.from_tokens(prompt), 1, greedy).result().sequences[0].tokens_T)
        assert "Paris" in answer

        target = [*tokenizer.encode(" Tinkerflow trains it."), end]
        datum = supervised_datum(
            ModelInput.from_tokens(prompt + target), np.r_[np.zeros(len(prompt)), np.ones(len(target))]
        )
        losses = []
        for _ in range(6):
            step = client.forward_backward([datum], "cross_entropy")
            client.optim_step(AdamParams(learning_rate=1e-3))
            losses.append(step.result().loss)
        assert losses[-1] < 0.2 * losses[0]
        path = client.save_state("six-steps").result()
        resumed = backend.create_training_client_from_state(path, with_optimizer=True).result()
        assert resumed.optimizer_steps == 6

        sampler = client.save_weights_and_get_sampling_client().result()
        response = sampler.sample(
            ModelInput.from_tokens(prompt), 4, SamplingParams(max_tokens=16, seed=0, stop_strings=("<|im_end|>",))
        ).result()
        assert len(response.sequences) == 4
        trained = tokenizer.decode(
            sampler.sample(ModelInput.from_tokens(prompt), 1, greedy).result().sequences[0].tokens_T
        )
        assert trained.startswith(" Tinkerflow")
        sequence = response.sequences[0]
        scored = sampler.compute_logprobs(ModelInput.from_tokens(np.r_[prompt, sequence.tokens_T])).result()
        np.testing.assert_allclose(sequence.logprobs_T, scored[len(prompt) :], atol=1e-4)
