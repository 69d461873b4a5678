"""Chunked, packed target logprobs of the local backend equal the unchunked, padded computation.

The reference is the model's own full-logits path (``run_builtin`` / ``run_custom`` with no split head: the whole
``[D, T, vocab]`` logits, padding included); the computation under test splits the head, packs the real positions
and runs the unembedding in checkpointed chunks. Logprobs, losses and the gradients of every LoRA weight (the
unembedding's adapters included) must agree in fp32 for every built-in loss and a custom loss, over ragged lengths,
chunk sizes and micro-batch budgets (hypothesis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinkerflow import Datum, ModelInput

torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.local.batches import Batch, encode_data, microbatches, pack  # noqa: E402
from tinkerflow.shell.backends.local.forward import (  # noqa: E402
    PlainHead,
    checkpoint_layers,
    chunked_logprobs,
    run_builtin,
    run_custom,
)
from tinkerflow.shell.backends.local.lora import LoraLinear, LoraSetup, build_trainable  # noqa: E402
from tinkerflow.shell.backends.local.models import BaseModel, load_base_model  # noqa: E402
from tinkerflow.shell.backends.protocol import check_builtin_loss  # noqa: E402
from tinkerflow.training import ForwardBackwardOutput  # noqa: E402

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
TINY_QWEN_TIED = "tiny-qwen3:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64,tie=1"
VOCAB = 300
CONFIGS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "cispo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "dro": {"beta": 0.5},
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
CPU = torch.device("cpu")
RTOL, ATOL = 2e-5, 2e-6


class Trainable(tuple[BaseModel, torch.nn.Module, list[torch.nn.Parameter], torch.nn.Module, list[torch.nn.Parameter]]):
    """A tiny base model, the reference LoRA model and its adapters, and an equal model whose decoder layers are
    checkpointed (:func:`checkpoint_layers`) and its adapters (a short repr for hypothesis' failure reports)."""

    def __repr__(self) -> str:
        return f"Trainable({self[0].name})"


def _lora_model(base: BaseModel) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    model, named = build_trainable(base, LoraSetup(rank=4, target_modules=TARGETS), seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B so that every adapter has a gradient
        for _, parameter in named:
            parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model, [parameter for _, parameter in named]


@pytest.fixture(scope="module", params=[TINY, TINY_QWEN_TIED])
def trainable(request: pytest.FixtureRequest) -> Trainable:
    base = load_base_model(str(request.param), CPU, torch.float32)
    reference, reference_params = _lora_model(base)
    model, params = _lora_model(base)
    assert checkpoint_layers(model) == 2
    return Trainable((base, reference, reference_params, model, params))


def _data(rng: np.random.Generator, lengths: Sequence[int]) -> list[Datum]:
    """Datums with every loss input: sparse weights, sparse advantages (zeros skip autograd), sampling logprobs."""
    data = []
    for length in lengths:
        tokens = rng.integers(0, VOCAB, length + 1)
        advantages = rng.normal(size=length) * (rng.random(length) < 0.6)
        data.append(
            Datum(
                model_input=ModelInput.from_tokens(tokens[:-1]),
                target_tokens_T=tokens[1:],
                weights_T=(rng.random(length) < 0.7).astype(np.float32),
                # near the tiny models' own logprobs (about log 1/300), so ratios fall inside and outside the clip
                logprobs_T=rng.uniform(-5.9, -5.5, length).astype(np.float32),
                advantages_T=advantages.astype(np.float32),
            )
        )
    return data


def _gradients(
    params: Sequence[torch.nn.Parameter], run: Callable[[], ForwardBackwardOutput]
) -> tuple[ForwardBackwardOutput, list[np.ndarray]]:
    for parameter in params:
        parameter.grad = None
    output = run()
    grads = [np.zeros(tuple(p.shape)) if p.grad is None else p.grad.detach().numpy().copy() for p in params]
    for parameter in params:
        parameter.grad = None
    return output, grads


def _assert_same(
    got: tuple[ForwardBackwardOutput, list[np.ndarray]], want: tuple[ForwardBackwardOutput, list[np.ndarray]]
) -> None:
    (out, grads), (ref, ref_grads) = got, want
    for lp, ref_lp in zip(out.logprobs_D, ref.logprobs_D, strict=True):
        np.testing.assert_allclose(lp, ref_lp, rtol=RTOL, atol=ATOL)
    for key, value in ref.metrics.items():
        assert out.metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-4), key
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        scale = max(float(np.abs(ref_grad).max()), 1e-3)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=RTOL * scale * 10)


SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LENGTHS = st.lists(st.integers(1, 40), min_size=1, max_size=5)


@pytest.mark.parametrize("loss_name", sorted(CONFIGS))
@SETTINGS
@given(lengths=LENGTHS, chunk=st.integers(1, 70), budget=st.sampled_from([1, 40, 64, 4096]), seed=st.integers(0, 99))
def test_builtin_losses_chunked_equal_unchunked(
    trainable: Trainable,
    loss_name: str,
    lengths: list[int],
    chunk: int,
    budget: int,
    seed: int,
) -> None:
    base, reference, reference_params, model, params = trainable
    data = _data(np.random.default_rng(seed), lengths)
    name, config = check_builtin_loss(data, loss_name, CONFIGS[loss_name], "test")  # type: ignore[arg-type]
    batch = encode_data(data, base, "test")
    head = PlainHead.of(model)
    assert head is not None

    def run(
        net: torch.nn.Module, split: PlainHead | None, groups: list[list[int]], backward: bool
    ) -> ForwardBackwardOutput:
        return run_builtin(net, split, batch, groups, name, config, backward=backward, device=CPU, chunk=chunk)

    everything = [list(range(len(data)))]  # one padded micro-batch, in order
    want = _gradients(reference_params, lambda: run(reference, None, everything, True))
    got = _gradients(params, lambda: run(model, head, microbatches(lengths, budget), True))
    _assert_same(got, want)
    forward_only = run(model, head, microbatches(lengths, budget), False)  # no autograd at all
    for lp, ref_lp in zip(forward_only.logprobs_D, want[0].logprobs_D, strict=True):
        np.testing.assert_allclose(lp, ref_lp, rtol=RTOL, atol=ATOL)


def _nonlinear_loss(data: Sequence[Datum], logprobs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """A loss whose gradient differs per token and per datum (and is zero where the weight is)."""
    total = torch.zeros((), dtype=torch.float32)
    for datum, lp in zip(data, logprobs, strict=True):
        weights = torch.as_tensor(datum.weights_T, dtype=lp.dtype)
        total = total + (weights * torch.exp(lp)).sum() - (weights * lp).mean() ** 2
    return total, {"tokens": float(sum(lp.numel() for lp in logprobs))}


@SETTINGS
@given(lengths=LENGTHS, chunk=st.integers(1, 70), budget=st.sampled_from([1, 40, 4096]), seed=st.integers(0, 99))
def test_custom_loss_chunked_equals_unchunked(
    trainable: Trainable,
    lengths: list[int],
    chunk: int,
    budget: int,
    seed: int,
) -> None:
    base, reference, reference_params, model, params = trainable
    batch = encode_data(_data(np.random.default_rng(seed), lengths), base, "test")
    head = PlainHead.of(model)
    everything = [list(range(len(lengths)))]
    want = _gradients(reference_params, lambda: run_custom(reference, batch, everything, _nonlinear_loss, device=CPU))
    got = _gradients(
        params,
        lambda: run_custom(
            model, batch, microbatches(lengths, budget), _nonlinear_loss, device=CPU, head=head, chunk=chunk
        ),
    )
    _assert_same(got, want)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(0, 40), chunk=st.integers(1, 50), seed=st.integers(0, 99))
def test_chunked_logprobs_values_and_gradients(rows: int, chunk: int, seed: int) -> None:
    """Against plain ``log_softmax`` of the whole logits, on a LoRA-adapted head: values and the gradients of the
    hidden states, the adapters (and, unfrozen, the base weight)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(8, 30, bias=False)
    head = LoraLinear(base, 2, 32, generator)
    with torch.no_grad():
        head.lora_B.weight.normal_(generator=generator)
    hidden = torch.randn(rows, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 30, (rows,), generator=generator)
    upstream = torch.randn(rows, generator=generator)
    leaves = [hidden, base.weight, head.lora_A.weight, head.lora_B.weight]

    def grads(values: torch.Tensor) -> list[torch.Tensor]:
        total = (values * upstream).sum()
        return list(torch.autograd.grad(total, leaves, allow_unused=True)) if rows else []

    want = torch.log_softmax(head(hidden), dim=-1).gather(1, targets[:, None])[:, 0]
    got = chunked_logprobs(head, hidden, targets, chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for mine, theirs in zip(grads(got), grads(want), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)  # fp32 sums in another order


def test_chunked_backward_never_holds_more_than_one_chunk_of_logits() -> None:
    """The autograd graph keeps no ``[rows, vocab]`` tensor: the saved tensors of the chunked graph stay far below
    one full logits tensor (the unchunked graph saves at least one)."""
    rows, vocab, chunk = 256, 4000, 32
    head = torch.nn.Linear(16, vocab, bias=False)
    hidden = torch.randn(rows, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))

    def saved_elements(compute: Callable[[], torch.Tensor]) -> tuple[int, int]:
        sizes: list[int] = []

        def pack_hook(tensor: torch.Tensor) -> torch.Tensor:
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda tensor: tensor):
            compute().sum().backward()
        return max(sizes), sum(sizes)

    largest_full, _ = saved_elements(lambda: torch.log_softmax(head(hidden), -1).gather(1, targets[:, None]))
    largest, total = saved_elements(lambda: chunked_logprobs(head, hidden, targets, chunk))
    assert largest_full >= rows * vocab
    assert largest <= chunk * vocab  # only while one chunk is recomputed in the backward pass
    assert total < rows * vocab


def test_pack_keeps_real_positions_only(trainable: Trainable) -> None:
    base = trainable[0]
    lengths = [3, 7, 1]
    data = _data(np.random.default_rng(0), lengths)
    batch: Batch = encode_data(data, base, "test")
    packed = pack(batch, [1, 0, 2], CPU)
    assert packed.ids.shape == (3, 7)
    assert packed.offsets == (0, 7, 10, 11)
    np.testing.assert_array_equal(packed.positions.numpy(), [*range(7), 7, 8, 9, 14])
    np.testing.assert_array_equal(packed.targets.numpy(), np.concatenate([data[i].target_tokens_T for i in (1, 0, 2)]))
    pieces = packed.split(torch.arange(11))
    assert [piece.numel() for piece in pieces] == [7, 3, 1]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), max_size=12), budget=st.integers(1, 200))
def test_microbatches_partition_within_budget(lengths: list[int], budget: int) -> None:
    groups = microbatches(lengths, budget)
    assert sorted(index for group in groups for index in group) == list(range(len(lengths)))
    for group in groups:
        padded = len(group) * max(lengths[index] for index in group)
        assert padded <= budget or len(group) == 1
    flat = [lengths[index] for group in groups for index in group]
    assert flat == sorted(lengths, reverse=True)  # longest first: similar lengths share a micro-batch
