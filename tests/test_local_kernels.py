"""The local engine's hand-written training kernels: the LoRA product's backward pass and the bf16 causal attention,
against the plain autograd formulas and PyTorch's SDPA, and where the training client uses them."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow import AdamParams, Datum, ModelInput

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tinkerflow.shell.backends.local import LocalBackend  # noqa: E402
from tinkerflow.shell.backends.local.attention import (  # noqa: E402
    TRAIN_ATTENTION,
    causal_attention,
    train_attention,
)
from tinkerflow.shell.backends.local.lora import LoraLinear  # noqa: E402

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"


def _lora(inputs: int, outputs: int, rank: int, *, bias: bool, dtype: object, seed: int) -> LoraLinear:
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(inputs, outputs, bias=bias)
    with torch.no_grad():
        base.weight.normal_(generator=generator)
        if bias:
            base.bias.normal_(generator=generator)
    layer = LoraLinear(base.to(dtype), rank, 32, generator)
    with torch.no_grad():
        layer.lora_B.weight.normal_(generator=generator)  # B starts at zero: give the product something to do
    return layer


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    inputs=st.integers(1, 7),
    outputs=st.integers(1, 7),
    rank=st.sampled_from([1, 3, 8]),
    bias=st.booleans(),
    train_base=st.booleans(),
    seed=st.integers(0, 999),
)
def test_lora_product_equals_the_formula_values_and_gradients(
    rows: int, inputs: int, outputs: int, rank: int, bias: bool, train_base: bool, seed: int
) -> None:
    """fp64: ``x W^T + b + (alpha / r) (x A^T) B^T`` and its gradients in the input, the adapters and (when they are
    trained) the base weight and bias, as autograd computes them from the plain formula."""
    layer = _lora(inputs, outputs, rank, bias=bias, dtype=torch.float64, seed=seed)
    layer.base_layer.requires_grad_(train_base)
    x = torch.randn(2, rows, inputs, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, rows, outputs, dtype=torch.float64)
    base = layer.base_layer
    leaves = [x, layer.lora_A.weight, layer.lora_B.weight] + ([p for p in base.parameters()] if train_base else [])
    plain = F.linear(x, base.weight, base.bias) + layer.scale * (x @ layer.lora_A.weight.t()) @ layer.lora_B.weight.t()
    got = layer(x)
    torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)
    for mine, theirs in zip(
        torch.autograd.grad(got, leaves, upstream), torch.autograd.grad(plain, leaves, upstream), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_lora_product_passes_gradcheck() -> None:
    """Finite differences agree with the hand-written backward pass in every input (scale 16, not 1)."""
    from tinkerflow.shell.backends.local.lora import _LoraProduct

    layer = _lora(5, 4, 2, bias=True, dtype=torch.float64, seed=1)
    base = layer.base_layer

    def function(x: object, a: object, b: object, weight: object, bias: object) -> object:
        return _LoraProduct.apply(x, weight, bias, a, b, layer.scale)  # type: ignore[no-untyped-call]  # torch

    inputs = [
        torch.randn(3, 5, dtype=torch.float64, requires_grad=True),
        *(
            tensor.detach().clone().requires_grad_(True)
            for tensor in (layer.lora_A.weight, layer.lora_B.weight, base.weight, base.bias)
        ),
    ]
    assert layer.scale == 16.0
    assert torch.autograd.gradcheck(function, inputs)


def test_lora_product_on_a_bf16_base_keeps_fp32_masters_and_rounds_like_bf16() -> None:
    """bf16 base, fp32 adapters: the output is the fp32 formula's within bf16 rounding, the adapters' gradients are
    fp32 (for the fp32 masters) and close to the fp32 computation's."""
    wide = _lora(64, 48, 8, bias=False, dtype=torch.float32, seed=3)
    narrow = _lora(64, 48, 8, bias=False, dtype=torch.bfloat16, seed=3)
    assert narrow.lora_A.weight.dtype == torch.float32
    with torch.no_grad():
        narrow.base_layer.weight.copy_(wide.base_layer.weight)  # both bases hold the same (bf16-exact) numbers
        wide.base_layer.weight.copy_(narrow.base_layer.weight.float())
        narrow.lora_B.weight.copy_(wide.lora_B.weight)
    x = torch.randn(16, 64).bfloat16()
    want = wide(x.float())
    got = narrow(x)
    assert got.dtype == torch.bfloat16
    scale = want.abs().max()
    assert (got.float() - want).abs().max() <= 2e-2 * scale
    upstream = torch.randn(16, 48)
    grads_want = torch.autograd.grad(want, [wide.lora_A.weight, wide.lora_B.weight], upstream)
    grads_got = torch.autograd.grad(got, [narrow.lora_A.weight, narrow.lora_B.weight], upstream.bfloat16())
    for mine, theirs in zip(grads_got, grads_want, strict=True):
        assert mine.dtype == torch.float32
        assert (mine - theirs).abs().max() <= 2e-2 * theirs.abs().max()


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 3),
    length=st.integers(1, 40),
    width=st.sampled_from([1, 4, 8]),
    seed=st.integers(0, 999),
)
def test_causal_attention_equals_sdpa_values_and_gradients(
    batch: int, kv_heads: int, groups: int, length: int, width: int, seed: int
) -> None:
    """fp64, grouped query heads: the same values and gradients as PyTorch's causal SDPA with ``enable_gqa``."""
    generator = torch.Generator().manual_seed(seed)
    heads = kv_heads * groups
    q, k, v = (
        torch.randn(batch, count, length, width, dtype=torch.float64, generator=generator).requires_grad_(True)
        for count in (heads, kv_heads, kv_heads)
    )
    upstream = torch.randn(batch, heads, length, width, dtype=torch.float64, generator=generator)
    scale = 0.37
    got = causal_attention(q, k, v, scale)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(
        torch.autograd.grad(got, [q, k, v], upstream), torch.autograd.grad(want, [q, k, v], upstream), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def _qkv(dtype: object, length: int = 24) -> tuple[object, object, object]:
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(2, heads, length, 8, generator=generator).to(dtype)  # type: ignore[return-value]
        for heads in (4, 2, 2)
    )


def test_train_attention_computes_bf16_causal_passes_itself() -> None:
    """bf16, no mask, as many queries as keys: :func:`causal_attention`, transposed as transformers expects, within
    bf16 rounding of SDPA."""
    q, k, v = _qkv(torch.bfloat16)
    out, weights = train_attention(_Module(), q, k, v, None, scaling=0.3)
    assert weights is None
    assert out.shape == (2, 24, 4, 8)
    assert out.is_contiguous()
    torch.testing.assert_close(out, causal_attention(q, k, v, 0.3).transpose(1, 2))
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out.float(), sdpa.float(), rtol=0, atol=3e-2)


@pytest.mark.parametrize(
    "case", ["fp32", "mask", "decode", "not_causal", "dropout", "softcap", "too_long"], ids=lambda case: str(case)
)
def test_train_attention_leaves_everything_else_to_sdpa(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32, a mask, a single query, a non-causal module, dropout, soft-capping or more scores than
    ``MAX_SCORES``: transformers' ``sdpa``, bit for bit (soft-capping: sdpa's own error)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tinkerflow.shell.backends.local import attention

    q, k, v = _qkv(torch.float32 if case == "fp32" else torch.bfloat16)
    module = _Module()
    mask = None
    kwargs: dict[str, object] = {}
    if case == "mask":
        mask = torch.ones(2, 1, 24, 24, dtype=torch.bool).tril()
    elif case == "decode":
        q = q[:, :, -1:]  # type: ignore[index]  # a tensor
    elif case == "not_causal":
        module.is_causal = False
    elif case == "dropout":
        kwargs["dropout"] = 0.5
    elif case == "too_long":
        monkeypatch.setattr(attention, "MAX_SCORES", 2 * 4 * 24 * 24 - 1)  # one score short of this call's
    elif case == "softcap":
        with pytest.raises(ValueError, match="softcap"):
            train_attention(module, q, k, v, None, softcap=30.0)
        return
    torch.manual_seed(0)
    out, _ = train_attention(module, q, k, v, mask, **kwargs)
    torch.manual_seed(0)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, **kwargs)
    assert torch.equal(out, want)


def _data() -> list[Datum]:
    rng = np.random.default_rng(0)
    data = []
    for length in (12, 20):
        tokens = rng.integers(0, 300, length + 1)
        weights = np.ones(length, dtype=np.float32)
        data.append(
            Datum(model_input=ModelInput.from_tokens(tokens[:-1]), target_tokens_T=tokens[1:], weights_T=weights)
        )
    return data


@pytest.mark.parametrize(("dtype", "checkpointing"), [("bf16", True), ("bf16", False), ("fp32", True)])
def test_training_clients_use_the_bf16_attention_only_with_checkpointing(
    tmp_path: pathlib.Path, dtype: str, checkpointing: bool
) -> None:
    """A bf16 client with activation checkpointing trains with ``tinkerflow_train`` attention, and its logprobs
    are those of the same model on SDPA within bf16 rounding; fp32, or no checkpointing (every layer's
    probabilities would be held), keeps SDPA. The base model's shared config is never switched."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    backend = LocalBackend(checkpoint_dir=tmp_path, device="cpu", dtype=torch_dtype, checkpoint_layers=checkpointing)
    client = backend.create_lora_training_client(TINY, rank=4, seed=0).result()
    implementations = {sub.config._attn_implementation for sub in client._model.modules() if hasattr(sub, "config")}
    switched = dtype == "bf16" and checkpointing
    assert implementations == {TRAIN_ATTENTION if switched else "sdpa"}
    fresh = backend.base_model(TINY).build()  # another model on the same shared base and config
    assert {sub.config._attn_implementation for sub in fresh.modules() if hasattr(sub, "config")} == {"sdpa"}
    data = _data()
    got = client.forward_backward(data, "cross_entropy").result()
    plain = LocalBackend(checkpoint_dir=tmp_path / "plain", device="cpu", dtype=torch_dtype, checkpoint_layers=False)
    reference = plain.create_lora_training_client(TINY, rank=4, seed=0).result()
    want = reference.forward(data, "cross_entropy").result()
    for mine, theirs in zip(got.logprobs_D, want.logprobs_D, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=0.05 if switched else 1e-6)
    client.optim_step(AdamParams(learning_rate=1e-2)).result()
    for closing in (client, reference, backend, plain):
        closing.close()
