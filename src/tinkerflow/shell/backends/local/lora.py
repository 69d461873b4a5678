"""LoRA for the local backend: which modules get adapters, the adapter layer, merging for sampling. (Shell.)

Adapters of rank ``r`` with ``alpha = 32`` (scale ``alpha / r``), no dropout, on the attention (q/k/v/o) and MLP
(gate/up/down) projections and optionally the unembedding, as Tinker trains them. Parameters carry peft's names
(``<module>.lora_A.weight`` ``[r, in]``, ``<module>.lora_B.weight`` ``[out, r]``) and peft's initialization (A
Kaiming-uniform with ``a = sqrt(5)``, B zero), drawn from a generator seeded by the run's seed in module order, so
the same seed gives the same adapters. Why :class:`LoraLinear` rather than peft's own layer (same numbers in
fp32, not in bf16; not shown as fast): docs/backends.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, Protocol, cast

import attrs
import torch

from tinkerflow.errors import ConfigError
from tinkerflow.shell.backends.local.models import BaseModel

__all__ = [
    "ATTENTION_MODULES",
    "LORA_ALPHA",
    "MLP_MODULES",
    "UNEMBED_MODULES",
    "LoraLinear",
    "LoraSetup",
    "build_trainable",
    "lora_targets",
    "merge_adapters",
]

#: LoRA scale numerator: the adapters' output is multiplied by ``LORA_ALPHA / rank``.
LORA_ALPHA: Final = 32
ATTENTION_MODULES: Final = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES: Final = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES: Final = ("lm_head",)


@attrs.frozen
class LoraSetup:
    """Which modules get LoRA adapters, and their rank and alpha."""

    rank: int
    target_modules: tuple[str, ...]
    alpha: int = LORA_ALPHA

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def lora_targets(
    model_modules: Sequence[str], *, train_attn: bool, train_mlp: bool, train_unembed: bool
) -> tuple[str, ...]:
    """The module kinds (``q_proj``, ``lm_head``, ...) to adapt, in Tinker's order, among those the model has."""
    wanted: list[str] = []
    if train_attn:
        wanted += ATTENTION_MODULES
    if train_mlp:
        wanted += MLP_MODULES
    if train_unembed:
        wanted += UNEMBED_MODULES
    present = {name.rsplit(".", 1)[-1] for name in model_modules}
    return tuple(name for name in wanted if name in present)


class _Context(Protocol):
    """What :class:`_LoraProduct` keeps on torch's ``FunctionCtx`` (which takes any attribute) between its passes."""

    saved_tensors: tuple[torch.Tensor, ...]
    needs_input_grad: tuple[bool, ...]
    scale: float
    in_shape: torch.Size
    adapter_dtype: torch.dtype

    def save_for_backward(self, *tensors: torch.Tensor) -> None: ...


class _LoraProduct(torch.autograd.Function):
    """``x @ W^T (+ bias) + scale * (x @ A^T) @ B^T`` with a hand-written backward pass (see :class:`LoraLinear`).

    The adapters (fp32 masters on a bf16/fp16 base) are cast to the base's dtype once per call, so every product
    runs in the base's dtype and no activation-sized tensor is converted; their gradients come back in the masters'
    dtype. ``scale`` is the ``alpha`` of the in-place ``addmm_`` (peft's order: the product, then the scale).
    """

    @staticmethod
    def forward(
        ctx: _Context,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        master_a: torch.Tensor,
        master_b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        a, b = master_a.to(weight.dtype), master_b.to(weight.dtype)
        rows = x.reshape(-1, x.shape[-1])
        out = torch.mm(rows, weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        hidden = torch.mm(rows, a.t())
        out.addmm_(hidden, b.t(), alpha=scale)
        ctx.save_for_backward(rows, weight, a, b, hidden)
        ctx.scale = scale
        ctx.in_shape = x.shape
        ctx.adapter_dtype = master_a.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: _Context, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight, a, b, hidden = ctx.saved_tensors
        scale, needs = ctx.scale, ctx.needs_input_grad
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = torch.mm(grad_rows, b)
        grad_b = torch.mm(grad_rows.t(), hidden)
        if scale != 1.0:
            grad_hidden.mul_(scale)
            grad_b.mul_(scale)
        grad_a = torch.mm(grad_hidden.t(), rows)
        grad_x = grad_weight = grad_bias = None
        if needs[0]:
            grad_x = torch.mm(grad_rows, weight).addmm_(grad_hidden, a).view(ctx.in_shape)
        if needs[1]:
            grad_weight = torch.mm(grad_rows.t(), rows)
        if needs[2]:
            grad_bias = grad_rows.sum(0)
        dtype = ctx.adapter_dtype
        return grad_x, grad_weight, grad_bias, grad_a.to(dtype), grad_b.to(dtype), None


class LoraLinear(torch.nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T`` with ``scale = alpha / rank``: LoRA as peft defines it.

    Parameters are named as peft names them and initialized as peft initializes them, from an explicit generator.
    Unlike peft's layer, the update is accumulated into the base output in place (one fused ``addmm_``, the scale
    as its ``alpha``) and the forward and backward products are written out by hand (:class:`_LoraProduct`), which
    saves several activation-sized passes per layer, a lot for the unembedding. Adapters are fp32 on bf16/fp16
    bases; the products run in the base's dtype (mixed precision: fp32 masters, bf16 arithmetic).
    """

    def __init__(self, base_layer: torch.nn.Linear, rank: int, alpha: int, generator: torch.Generator) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        dtype = torch.float32 if weight.dtype in (torch.bfloat16, torch.float16) else weight.dtype
        self.lora_A = torch.nn.Linear(base_layer.in_features, rank, bias=False, device="cpu", dtype=dtype)
        self.lora_B = torch.nn.Linear(rank, base_layer.out_features, bias=False, device="cpu", dtype=dtype)
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(weight.device)
        self.lora_B.to(weight.device)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        out = _LoraProduct.apply(  # type: ignore[no-untyped-call]  # torch leaves Function.apply untyped
            x, base.weight, base.bias, self.lora_A.weight, self.lora_B.weight, self.scale
        )
        return cast("torch.Tensor", out)


def build_trainable(
    base: BaseModel, lora: LoraSetup | None, seed: int
) -> tuple[torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]:
    """A model to train and its trainable parameters by name: the base with LoRA adapters, or a full copy."""
    if lora is None:
        model = base.build(clone=True)
        model.requires_grad_(True)
        return model, list(model.named_parameters())
    model = base.build()
    wanted = set(lora.target_modules)
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    ]
    if not targets:
        raise ConfigError("LocalBackend", "base_model", f"{base.name!r} has none of the modules LoRA targets.")
    generator = torch.Generator().manual_seed(seed)
    for name in targets:  # in module order, so the seeded initialization is reproducible
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = cast("torch.nn.Linear", getattr(parent, child))
        setattr(parent, child, LoraLinear(linear, lora.rank, lora.alpha, generator))
    model.eval()
    return model, [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


def merge_adapters(model: torch.nn.Module, lora: LoraSetup, weights: Mapping[str, torch.Tensor]) -> None:
    """Merge the adapters ``weights`` (peft names) into ``model``'s frozen weights: ``W + scale * B @ A``."""
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in weights})
    with torch.no_grad():
        for name in modules:
            module = model.get_submodule(name)
            weight = cast("torch.Tensor", module.weight)
            a = weights[f"{name}.lora_A.weight"].float()
            b = weights[f"{name}.lora_B.weight"].float()
            merged = (weight.float() + lora.scale * (b @ a)).to(weight.dtype)
            module.weight = torch.nn.Parameter(merged, requires_grad=False)
