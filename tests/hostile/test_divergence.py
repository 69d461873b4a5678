"""A diverged run is reported against its learning rate, not an internal field (issue 15)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tinkerflow.datum import Datum
from tinkerflow.errors import NonFiniteError
from tinkerflow.model_input import ModelInput
from tinkerflow.training import AdamParams

pytest.importorskip("torch")

from tinkerflow.shell.backends.local.backend import LocalBackend


def _datum() -> Datum:
    tokens = np.arange(1, 12)
    return Datum(ModelInput.from_tokens(tokens[:-1]), target_tokens_T=tokens[1:], weights_T=np.ones(10, np.float32))


@pytest.mark.hostile("backends")
@pytest.mark.parametrize("custom", [False, True])
def test_divergence_names_the_learning_rate(tmp_path: pathlib.Path, custom: bool) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path)
    client = backend.create_lora_training_client("tiny-llama", rank=4, seed=0).result()
    client.forward_backward([_datum()], "cross_entropy").result()  # finite: nothing to report before any step
    client.optim_step(AdamParams(learning_rate=1e30)).result()
    if custom:
        future = client.forward_backward_custom([_datum()], lambda data, lps: (-lps[0].sum(), {}))
    else:
        future = client.forward_backward([_datum()], "cross_entropy")
    with pytest.raises(NonFiniteError) as caught:
        future.result()
    message = str(caught.value)
    assert ".learning_rate: " in message
    assert "1e+30" in message
    assert "lower the learning rate" in message


@pytest.mark.hostile("backends")
def test_a_diverged_forward_without_steps_names_the_outputs(tmp_path: pathlib.Path) -> None:
    import torch

    backend = LocalBackend(checkpoint_dir=tmp_path)
    client = backend.create_lora_training_client("tiny-llama", rank=4, seed=0).result()
    with torch.no_grad():
        for _, parameter in client._params:  # type: ignore[attr-defined]  # the test breaks the weights on purpose
            parameter.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"forward\.logprobs_D\[0\]"):
        client.forward([_datum()], "cross_entropy").result()
