"""What the local backend keeps for training: frozen base weights, activation checkpointing that changes nothing but
memory, the option's checks, and bf16 bases with fp32 adapters (the GPU configuration, run on the CPU)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from tinkerflow import AdamParams, Datum, ModelInput
from tinkerflow.errors import ConfigError

torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.local import LocalBackend, LocalTrainingClient  # noqa: E402
from tinkerflow.shell.backends.local.forward import checkpoint_layers  # noqa: E402
from tinkerflow.shell.backends.local.lora import LoraSetup, build_trainable  # noqa: E402
from tinkerflow.shell.backends.local.models import load_base_model  # noqa: E402

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def _data(lengths: Sequence[int], seed: int = 0) -> list[Datum]:
    rng = np.random.default_rng(seed)
    data = []
    for length in lengths:
        tokens = rng.integers(0, 300, length + 1)
        weights = (rng.random(length) < 0.7).astype(np.float32)
        data.append(
            Datum(model_input=ModelInput.from_tokens(tokens[:-1]), target_tokens_T=tokens[1:], weights_T=weights)
        )
    return data


def _client(tmp_path: pathlib.Path, **options: object) -> tuple[LocalBackend, LocalTrainingClient]:
    backend = LocalBackend(checkpoint_dir=tmp_path, device="cpu", **options)  # type: ignore[arg-type]
    return backend, backend.create_lora_training_client(TINY, rank=4, seed=0).result()


def test_only_the_adapters_require_grad() -> None:
    base = load_base_model(TINY, torch.device("cpu"), torch.float32)
    model, params = build_trainable(base, LoraSetup(rank=4, target_modules=TARGETS), seed=0)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {name for name, _ in params}
    assert trainable
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert all(not tensor.requires_grad for tensor in base.state.values())


def test_checkpointed_layers_give_the_same_training(tmp_path: pathlib.Path) -> None:
    """Two clients, with and without activation checkpointing: the same logprobs, losses, gradients and weights
    after a step, on ragged lengths split in several micro-batches."""
    data = _data([5, 17, 9, 30])
    results: list[tuple[list[np.ndarray], float, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    for flag in (False, True):
        backend, client = _client(tmp_path / str(flag), checkpoint_layers=flag, max_tokens_per_batch=40)
        params = client.get_trainable_parameters().result()
        rng = np.random.default_rng(3)
        client.set_trainable_parameters({k: 0.05 * rng.normal(size=v.shape) for k, v in params.items()}).result()
        out = client.forward_backward(data, "cross_entropy").result()
        grads = client.get_gradients().result()
        client.optim_step(AdamParams(learning_rate=1e-2)).result()
        results.append((list(out.logprobs_D), out.loss, grads, client.get_trainable_parameters().result()))
        client.close()
        backend.close()
    (lp_a, loss_a, grads_a, weights_a), (lp_b, loss_b, grads_b, weights_b) = results
    for a, b in zip(lp_a, lp_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(weights_a[name], weights_b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_checkpointing_keeps_less_for_the_backward_pass() -> None:
    """Saved activations of a backward pass shrink with checkpointed layers (only each layer's input is kept)."""
    base = load_base_model(TINY, torch.device("cpu"), torch.float32)
    ids = torch.randint(0, 300, (2, 48))

    def saved(prepare: Callable[[torch.nn.Module], object]) -> int:
        model, _ = build_trainable(base, LoraSetup(rank=4, target_modules=TARGETS), seed=0)
        prepare(model)
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if not isinstance(tensor, torch.nn.Parameter) and tensor.grad_fn is not None:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(input_ids=ids, use_cache=False).logits.sum().backward()
        return sum(storages.values())

    plain, checkpointed = saved(lambda model: None), saved(checkpoint_layers)
    assert checkpointed < plain / 2


def test_checkpoint_layers_without_layers_is_a_no_op() -> None:
    assert checkpoint_layers(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [("checkpoint_layers", 1), ("logprob_chunk_tokens", 0), ("return_freed_memory", "sometimes")],
)
def test_memory_options_are_checked(tmp_path: pathlib.Path, option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        LocalBackend(checkpoint_dir=tmp_path, device="cpu", **{option: value})  # type: ignore[arg-type]


def test_bf16_base_trains_fp32_adapters(tmp_path: pathlib.Path) -> None:
    """A bf16 base (the CUDA default) on the CPU: adapters stay fp32 masters, logprobs are close to the fp32
    model's (bf16 rounding), and a step moves the adapters."""
    data = _data([12, 20])
    _, reference = _client(tmp_path / "fp32")
    backend, client = _client(tmp_path / "bf16", dtype=torch.bfloat16)
    want = reference.forward(data, "cross_entropy").result()
    got = client.forward_backward(data, "cross_entropy").result()
    for a, b in zip(got.logprobs_D, want.logprobs_D, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=0.1)
    before = client.get_trainable_parameters().result()
    assert all(value.dtype == np.float32 for value in before.values())
    client.optim_step(AdamParams(learning_rate=1e-2)).result()
    after = client.get_trainable_parameters().result()
    assert any(np.abs(after[name] - before[name]).max() > 0 for name in before)
    assert all(value.dtype == np.float32 for value in after.values())
    client.close()
    reference.close()
    backend.close()


@pytest.mark.parametrize("loss", ["cross_entropy", "custom"])
def test_trimming_between_passes_runs_once_per_micro_batch_and_changes_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    """``return_freed_memory="between_passes"`` trims the heap before every forward/backward micro-batch (here
    3 of them, twice each for a custom loss over several micro-batches) and gives the same bits as not trimming."""
    from tinkerflow.shell.backends.local import heap

    calls: list[bool] = []
    plain = heap.trim
    monkeypatch.setattr(heap, "trim", lambda: calls.append(plain()) or True)
    data = _data([20, 25, 30])  # 40 tokens per pass: one datum each
    results = []
    for mode in (False, "between_passes"):
        backend, client = _client(tmp_path / str(mode), return_freed_memory=mode, max_tokens_per_batch=40)
        if loss == "custom":
            out = client.forward_backward_custom(data, lambda _data, lps: (sum(lp.sum() for lp in lps), {})).result()
        else:
            out = client.forward_backward(data, "cross_entropy").result()
        results.append((list(out.logprobs_D), client.get_gradients().result()))
        client.close()
        backend.close()
    assert len(calls) == (6 if loss == "custom" else 3)
    (lp_a, grads_a), (lp_b, grads_b) = results
    for a, b in zip(lp_a, lp_b, strict=True):
        np.testing.assert_array_equal(a, b)
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_heap_helpers_report_what_they_did() -> None:
    """On glibc, ``trim`` gives back free pages held in the middle of the heap (blocks freed below one still in
    use, which ``free`` alone keeps), and ``map_large_blocks`` is accepted; elsewhere both are no-ops that say so."""
    import ctypes
    import platform

    from tinkerflow.shell.backends.local import heap

    if platform.libc_ver()[0] != "glibc":
        assert heap.trim() is False
        assert heap.map_large_blocks() is False
        return
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def resident_mib() -> float:
        return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    blocks = [libc.malloc(64 << 10) for _ in range(1024)]  # 64 MiB in 64 KiB heap blocks (below any mmap threshold)
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)  # resident
    for block in blocks[:-1]:  # the last stays in use, so the freed ones are not at the heap's top
        libc.free(block)
    before = resident_mib()
    assert heap.trim() is True
    assert resident_mib() < before - 48
    libc.free(blocks[-1])
    assert heap.map_large_blocks() is True
