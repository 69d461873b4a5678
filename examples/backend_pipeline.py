"""One pipeline, two backends: LoRA SFT on one example, then sample, through the backend protocol.

Runs on this machine with the embedded SmolLM2-135M-Instruct::

    python examples/backend_pipeline.py

Against the Tinker service, change the one marked line in ``main`` to ``TinkerBackend(), "Qwen/Qwen3-4B-Instruct-2507"``
(needs ``TINKER_API_KEY``), or run ``python examples/backend_pipeline.py --tinker``.
"""

from __future__ import annotations

import sys

import numpy as np

from tinkerflow import AdamParams, ModelInput, SamplingParams
from tinkerflow.shell.backends.protocol import Backend
from tinkerflow.supervised import supervised_datum


def pipeline(backend: Backend, base_model: str, steps: int = 12, learning_rate: float = 1e-3) -> str:
    """Teach the model one answer with LoRA, then sample it back greedily (the ten lines)."""
    client = backend.create_lora_training_client(base_model, rank=8, seed=0).result()
    tokenizer = client.get_tokenizer()
    prompt, answer = tokenizer.encode("Q: What is tinkerflow?\nA:"), tokenizer.encode(" A typed pipeline.\n")
    datum = supervised_datum(
        ModelInput.from_tokens(prompt + answer), np.r_[np.zeros(len(prompt)), np.ones(len(answer))]
    )
    for _ in range(steps):
        client.forward_backward([datum], "cross_entropy")
        client.optim_step(AdamParams(learning_rate=learning_rate))
    sampler = client.save_weights_and_get_sampling_client().result()
    params = SamplingParams(max_tokens=len(answer) + 2, temperature=0.0, stop_strings=("\n",))
    return tokenizer.decode(sampler.sample(ModelInput.from_tokens(prompt), 1, params).result().sequences[0].tokens_T)


def main(argv: list[str]) -> None:
    backend: Backend
    if "--tinker" in argv:
        from tinkerflow.shell.backends.tinker import TinkerBackend

        backend, base_model = TinkerBackend(), "Qwen/Qwen3-4B-Instruct-2507"
    else:
        from tinkerflow.shell.backends.local.backend import LocalBackend

        backend, base_model = LocalBackend(), "SmolLM2-135M-Instruct"  # the one line to change for Tinker
    print(repr(pipeline(backend, base_model)))


if __name__ == "__main__":
    main(sys.argv[1:])
