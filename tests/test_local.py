"""LocalBackend on tiny random models: losses and gradients vs the numpy references (finite differences), sampling
logprobs vs forward passes, exact save/load resume, submission order, and typed errors before any weight changes."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams
from tinkerflow import losses as lf
from tinkerflow.errors import ConfigError, ShapeError, ValidationError
from tinkerflow.tokenizers import Tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tinkerflow.shell.backends.local import LocalBackend, LocalSamplingClient, LocalTrainingClient  # noqa: E402
from tinkerflow.shell.backends.local.checkpoint import CheckpointError, LocalPath  # noqa: E402  (after the importorskips)

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
TINY_QWEN_TIED = "tiny-qwen3:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64,tie=1"
CONFIGS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "cispo": {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1},
    "dro": {"beta": 0.5},
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("ckpt"), device="cpu") as local:
        yield local


@pytest.fixture(scope="module")
def backend64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("ckpt64"), device="cpu", dtype=torch.float64) as local:
        yield local


def _client(backend: LocalBackend, model: str = TINY, **kwargs: object) -> LocalTrainingClient:
    return backend.create_lora_training_client(
        model, rank=kwargs.pop("rank", 4), seed=kwargs.pop("seed", 0), **kwargs
    ).result()  # type: ignore[arg-type]


def _sft_data(rng: np.random.Generator, lengths: Sequence[int], vocab: int = 300) -> list[Datum]:
    data = []
    for length in lengths:
        tokens = rng.integers(0, vocab, length + 1)
        weights = (rng.random(length) < 0.7).astype(np.float32)
        data.append(
            Datum(model_input=ModelInput.from_tokens(tokens[:-1]), target_tokens_T=tokens[1:], weights_T=weights)
        )
    return data


def _policy_data(client: LocalTrainingClient, data: Sequence[Datum], rng: np.random.Generator) -> list[Datum]:
    """Policy-gradient datums whose sampling logprobs sit around the model's own (ratios spread over the clip)."""
    logprobs = client.forward(data, "cross_entropy").result().logprobs_D
    policy = []
    for datum, lp in zip(data, logprobs, strict=True):
        # log r = offset; the clip sits at log .9 / log 1.1 (about -.105 / .095): keep every ratio off it
        magnitude = np.where(
            rng.random(lp.size) < 0.5, rng.uniform(0.02, 0.07, lp.size), rng.uniform(0.14, 0.3, lp.size)
        )
        offsets = rng.choice([-1, 1], lp.size) * magnitude
        policy.append(
            Datum(
                model_input=datum.model_input,
                target_tokens_T=datum.target_tokens_T,
                logprobs_T=(lp.astype(np.float64) - offsets).astype(np.float32),
                advantages_T=rng.normal(size=lp.size).astype(np.float32),
            )
        )
    return policy


def _randomize(client: LocalTrainingClient, rng: np.random.Generator, scale: float = 0.05) -> None:
    params = client.get_trainable_parameters().result()
    client.set_trainable_parameters(
        {name: scale * rng.normal(size=value.shape) for name, value in params.items()}
    ).result()


def _dot(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return float(sum(np.sum(a[name] * b[name]) for name in a))


def _directional(
    client: LocalTrainingClient,
    params: Mapping[str, np.ndarray],
    direction: Mapping[str, np.ndarray],
    value: Callable[[], float],
    step: float = 4e-4,
) -> float:
    """d/de value(params + e * direction) at 0: central differences with one Richardson extrapolation (error
    O(step^4)); the model's float32 islands (RMSNorm, rotary) rule out much smaller steps even in float64."""

    def central(h: float) -> float:
        client.set_trainable_parameters(_shifted(params, direction, h)).result()
        up = value()
        client.set_trainable_parameters(_shifted(params, direction, -h)).result()
        down = value()
        return (up - down) / (2 * h)

    estimate = (4 * central(step / 2) - central(step)) / 3
    client.set_trainable_parameters(params).result()
    return estimate


def _shifted(
    params: Mapping[str, np.ndarray], direction: Mapping[str, np.ndarray], eps: float
) -> dict[str, np.ndarray]:
    return {name: params[name] + eps * direction[name] for name in params}


# ---- losses and gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_name", sorted(CONFIGS))
def test_loss_and_gradient_match_reference_by_finite_differences(backend64: LocalBackend, loss_name: str) -> None:
    rng = np.random.default_rng(sorted(CONFIGS).index(loss_name))
    client = _client(backend64, rank=2)
    _randomize(client, rng)
    data: list[Datum] = _sft_data(rng, [7, 4])
    if loss_name != "cross_entropy":
        data = _policy_data(client, data, rng)
    config = CONFIGS[loss_name]
    result = client.forward_backward(data, loss_name, config).result()  # type: ignore[arg-type]

    # the loss is the reference formula of the per-datum logprobs the backend reports
    reference = lf.reference_batch_loss(loss_name, result.logprobs_D, data, config)  # type: ignore[arg-type]
    assert result.metrics["loss:sum"] == pytest.approx(reference, rel=1e-6, abs=1e-6)
    assert [lp.shape for lp in result.logprobs_D] == [(d.length,) for d in data]
    forward = client.forward(data, loss_name, config).result()  # type: ignore[arg-type]
    for a, b in zip(forward.logprobs_D, result.logprobs_D, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    # the gradient is the derivative of that loss (for cispo: of its surrogate, the clip weight being held fixed)
    grads = client.get_gradients().result()
    params = client.get_trainable_parameters().result()
    direction = {name: rng.normal(size=value.shape) for name, value in params.items()}
    if loss_name == "cispo":
        weights_D = [
            -lf.reference_loss("cispo", lp.astype(np.float64), d, config).dloss_dlogprobs_T
            for lp, d in zip(result.logprobs_D, data, strict=True)
        ]
        probe = [
            Datum(model_input=d.model_input, target_tokens_T=d.target_tokens_T, weights_T=w)
            for d, w in zip(data, weights_D, strict=True)
        ]

        def value() -> float:
            return client.forward(probe, "cross_entropy").result().loss
    else:

        def value() -> float:
            return client.forward(data, loss_name, config).result().loss  # type: ignore[arg-type]

    assert _dot(grads, direction) == pytest.approx(_directional(client, params, direction, value), rel=5e-4)
    client.close()


def test_gradients_accumulate_until_optim_step(backend64: LocalBackend) -> None:
    rng = np.random.default_rng(5)
    client = _client(backend64, rank=2)
    _randomize(client, rng)
    data = _sft_data(rng, [5, 6, 3])
    client.forward_backward(data[:1], "cross_entropy")
    client.forward_backward(data[1:], "cross_entropy")
    split = client.get_gradients().result()
    other = _client(backend64, rank=2)
    other.set_trainable_parameters(client.get_trainable_parameters().result()).result()
    other.forward_backward(data, "cross_entropy")
    joint = other.get_gradients().result()
    for name in joint:
        np.testing.assert_allclose(split[name], joint[name], rtol=1e-9, atol=1e-12)
    client.optim_step(AdamParams(learning_rate=1e-3)).result()
    assert all(not grad.any() for grad in client.get_gradients().result().values())


def test_microbatching_gives_the_same_loss_and_gradient(tmp_path: pathlib.Path) -> None:
    results = []
    for budget in (4096, 12):
        with LocalBackend(
            checkpoint_dir=tmp_path, device="cpu", dtype=torch.float64, max_tokens_per_batch=budget
        ) as local:
            client = _client(local, rank=2)
            client.set_trainable_parameters(
                {
                    k: 0.2 * np.cos(np.arange(v.size)).reshape(v.shape)
                    for k, v in client.get_trainable_parameters().result().items()
                }
            ).result()
            data = _sft_data(np.random.default_rng(6), [9, 3, 7, 2])
            output = client.forward_backward(data, "cross_entropy").result()
            results.append((output, client.get_gradients().result()))
    (first, grads_a), (second, grads_b) = results
    assert first.loss == pytest.approx(second.loss, rel=1e-10)
    for a, b in zip(first.logprobs_D, second.logprobs_D, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("loss_name", "model"), [("cross_entropy", TINY), ("ppo", TINY_QWEN_TIED), ("dro", TINY)])
def test_split_unembedding_gives_the_same_values_and_gradients(
    backend64: LocalBackend, loss_name: str, model: str
) -> None:
    """Training skips the unembedding's backward where the loss has no gradient: nothing observable changes."""
    rng = np.random.default_rng(12)
    split, whole = _client(backend64, model, rank=2), _client(backend64, model, rank=2)
    assert split._head is not None
    whole._head = None  # the plain path: full logits with autograd everywhere
    _randomize(split, rng)
    whole.set_trainable_parameters(split.get_trainable_parameters().result()).result()
    data: list[Datum] = _sft_data(rng, [8, 5, 7])
    config = {"dro": {"beta": 0.0}}.get(loss_name, {})
    if loss_name != "cross_entropy":
        data = [
            attrs.evolve(d, advantages_T=d.advantages_T * (rng.random(d.length) < 0.5))  # type: ignore[operator]
            for d in _policy_data(split, data, rng)
        ]
    a = split.forward_backward(data, loss_name, config).result()  # type: ignore[arg-type]
    b = whole.forward_backward(data, loss_name, config).result()  # type: ignore[arg-type]
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    for x, y in zip(a.logprobs_D, b.logprobs_D, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)
    grads_a, grads_b = split.get_gradients().result(), whole.get_gradients().result()
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-14)


def test_custom_loss_matches_builtin_and_reports_tinker_metrics(backend64: LocalBackend) -> None:
    rng = np.random.default_rng(7)
    builtin, custom = _client(backend64, rank=2), _client(backend64, rank=2)
    _randomize(builtin, rng)
    custom.set_trainable_parameters(builtin.get_trainable_parameters().result()).result()
    data = _sft_data(rng, [6, 4])
    expected = builtin.forward_backward(data, "cross_entropy").result()
    seen: list[int] = []

    def weighted_nll(batch: Sequence[Datum], logprobs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        seen.append(len(batch))
        loss = sum(
            -(torch.tensor(np.array(d.weights_T), dtype=lp.dtype) * lp).sum()
            for d, lp in zip(batch, logprobs, strict=True)
        )
        return loss, {"custom/tokens:sum": float(sum(lp.numel() for lp in logprobs))}

    output = custom.forward_backward_custom(data, weighted_nll).result()
    assert seen == [2]
    assert output.loss == pytest.approx(expected.loss, rel=1e-9)
    assert output.metrics["surrogate_loss:sum"] == pytest.approx(expected.loss, rel=1e-9)
    assert output.metrics["custom/tokens:sum"] == 10
    a, b = builtin.get_gradients().result(), custom.get_gradients().result()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-7, atol=1e-12)


def test_custom_loss_nonlinear_gradient_is_chain_rule(backend64: LocalBackend) -> None:
    """A DPO-style loss of sequence logprobs: the backend's gradient equals finite differences of the loss."""
    rng = np.random.default_rng(8)
    client = _client(backend64, rank=2)
    _randomize(client, rng)
    data = _sft_data(rng, [5, 5])

    def pair_loss(batch: Sequence[Datum], logprobs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        margin = logprobs[0].sum() - logprobs[1].sum()
        return -torch.nn.functional.logsigmoid(0.1 * margin), {}

    signed = [
        Datum(model_input=d.model_input, target_tokens_T=d.target_tokens_T, weights_T=np.full(d.length, sign))
        for d, sign in zip(data, (1.0, -1.0), strict=True)
    ]

    def value() -> float:
        margin = -client.forward(signed, "cross_entropy").result().loss  # sum lp0 - sum lp1, in float64
        return float(np.log1p(np.exp(-0.1 * margin)))

    loss = client.forward_backward_custom(data, pair_loss).result().loss
    assert loss == pytest.approx(value(), rel=1e-9)
    grads, params = client.get_gradients().result(), client.get_trainable_parameters().result()
    direction = {name: rng.normal(size=v.shape) for name, v in params.items()}
    assert _dot(grads, direction) == pytest.approx(_directional(client, params, direction, value), rel=5e-4)


# ---- sampling --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(backend: LocalBackend) -> LocalTrainingClient:
    """A tiny client with a few steps taken, so the LoRA deltas are not zero."""
    client = _client(backend, rank=4)
    data = _sft_data(np.random.default_rng(0), [12, 9, 15])
    for _ in range(3):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(AdamParams(learning_rate=5e-2))
    client.optim_step(AdamParams(learning_rate=5e-2)).result()
    return client


@pytest.fixture(scope="module")
def sampler(trained: LocalTrainingClient) -> LocalSamplingClient:
    return trained.save_weights_and_get_sampling_client().result()


@settings(max_examples=12, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 299), min_size=1, max_size=10),
    num_samples=st.integers(1, 4),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
    top_k=st.sampled_from([-1, 1, 5]),
    top_p=st.sampled_from([1.0, 0.9, 0.3]),
    seed=st.integers(0, 2**31),
)
def test_sampled_logprobs_equal_forward_logprobs(
    trained: LocalTrainingClient,
    sampler: LocalSamplingClient,
    prompt: list[int],
    num_samples: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
) -> None:
    params = SamplingParams(max_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    response = sampler.sample(ModelInput.from_tokens(prompt), num_samples, params).result()
    assert len(response.sequences) == num_samples
    data = []
    for sequence in response.sequences:
        assert sequence.stop_reason == "length"
        assert sequence.tokens_T.shape == (8,)
        full = np.concatenate([prompt, sequence.tokens_T])
        scored = sampler.compute_logprobs(ModelInput.from_tokens(full)).result()
        np.testing.assert_allclose(sequence.logprobs_T, scored[len(prompt) :], atol=1e-4)
        data.append(
            Datum(
                model_input=ModelInput.from_tokens(full[:-1]),
                target_tokens_T=full[1:],
                weights_T=np.ones(full.size - 1),
            )
        )
    # ... and the training client's forward pass (unmerged LoRA) gives the same numbers
    forward = trained.forward(data, "cross_entropy").result().logprobs_D
    for sequence, lp in zip(response.sequences, forward, strict=True):
        np.testing.assert_allclose(sequence.logprobs_T, lp[len(prompt) - 1 :], atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(sampler: LocalSamplingClient) -> None:
    prompt = ModelInput.from_tokens([1, 2, 3])
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=123)
    first = sampler.sample(prompt, 4, params).result()
    again = sampler.sample(prompt, 4, params).result()
    other = sampler.sample(prompt, 4, SamplingParams(max_tokens=12, temperature=1.0, seed=124)).result()
    assert [s.tokens_T.tolist() for s in first.sequences] == [s.tokens_T.tolist() for s in again.sequences]
    assert [s.tokens_T.tolist() for s in first.sequences] != [s.tokens_T.tolist() for s in other.sequences]
    assert len({s.sequence_id for s in first.sequences + again.sequences}) == 8


def test_greedy_sampling_follows_the_argmax(sampler: LocalSamplingClient) -> None:
    prompt = [5, 6, 7]
    sequence = sampler.sample(ModelInput.from_tokens(prompt), 2, SamplingParams(max_tokens=6, temperature=0.0)).result()
    a, b = sequence.sequences
    assert a.tokens_T.tolist() == b.tokens_T.tolist()
    tokens = list(prompt)
    for token in a.tokens_T:
        scored = sampler.sample(
            ModelInput.from_tokens(tokens), 1, SamplingParams(max_tokens=1, temperature=0.0)
        ).result()
        assert scored.sequences[0].tokens_T[0] == token
        tokens.append(int(token))


def test_stop_tokens_and_stop_strings(sampler: LocalSamplingClient) -> None:
    prompt = ModelInput.from_tokens([10, 11])
    free = sampler.sample(prompt, 1, SamplingParams(max_tokens=20, temperature=1.0, seed=3)).result().sequences[0]
    stop_token = int(free.tokens_T[4])
    stopped = sampler.sample(
        prompt, 1, SamplingParams(max_tokens=20, temperature=1.0, seed=3, stop_tokens=(stop_token,))
    ).result()
    sequence = stopped.sequences[0]
    first = free.tokens_T.tolist().index(stop_token)
    assert sequence.stop_reason == "stop"
    assert sequence.tokens_T.tolist() == free.tokens_T[: first + 1].tolist()  # the stop token is kept
    np.testing.assert_array_equal(sequence.logprobs_T, free.logprobs_T[: first + 1])

    tokenizer = sampler.get_tokenizer()
    text = tokenizer.decode(free.tokens_T.tolist())
    cut = next(i for i in range(1, len(free.tokens_T) + 1) if len(tokenizer.decode(free.tokens_T[:i].tolist())) >= 2)
    stop_text = tokenizer.decode(free.tokens_T[:cut].tolist())[-2:]
    by_string = sampler.sample(
        prompt, 1, SamplingParams(max_tokens=20, temperature=1.0, seed=3, stop_strings=(stop_text,))
    ).result()
    sequence = by_string.sequences[0]
    assert sequence.stop_reason == "stop"
    assert stop_text in tokenizer.decode(sequence.tokens_T.tolist())
    assert stop_text not in tokenizer.decode(sequence.tokens_T[:-1].tolist())
    assert text.startswith(tokenizer.decode(sequence.tokens_T.tolist()))


def test_prompt_logprobs_and_topk(sampler: LocalSamplingClient) -> None:
    prompt = ModelInput.from_tokens([3, 1, 4, 1, 5, 9, 2, 6])
    response = sampler.sample(
        prompt, 1, SamplingParams(max_tokens=1), include_prompt_logprobs=True, topk_prompt_logprobs=3
    ).result()
    scored = sampler.compute_logprobs(prompt).result()
    assert np.isnan(response.prompt_logprobs_T[0])
    assert np.isnan(scored[0])
    np.testing.assert_allclose(response.prompt_logprobs_T[1:], scored[1:], atol=1e-5)  # type: ignore[index]
    ids, values = response.topk_prompt_token_ids_T_K, response.topk_prompt_logprobs_T_K
    assert ids is not None
    assert values is not None
    assert ids.shape == (8, 3)
    assert (values[0] == -99999.0).all()
    assert np.all(np.diff(values[1:], axis=1) <= 0)  # sorted, most likely first
    assert np.all(values[1:, 0] >= response.prompt_logprobs_T[1:] - 1e-5)  # type: ignore[index]


def test_sampler_is_bound_to_fixed_weights(trained: LocalTrainingClient, sampler: LocalSamplingClient) -> None:
    prompt = ModelInput.from_tokens([7, 8, 9])
    before = sampler.compute_logprobs(prompt).result()
    client = _client(trained._backend, rank=4)
    client.set_trainable_parameters(trained.get_trainable_parameters().result()).result()
    client.forward_backward(_sft_data(np.random.default_rng(1), [10]), "cross_entropy")
    client.optim_step(AdamParams(learning_rate=0.1))
    fresh = client.save_weights_and_get_sampling_client().result()
    np.testing.assert_array_equal(sampler.compute_logprobs(prompt).result(), before)
    assert not np.allclose(fresh.compute_logprobs(prompt).result()[1:], before[1:])


def test_tied_embeddings_qwen3_sampling_property(backend: LocalBackend) -> None:
    client = _client(backend, TINY_QWEN_TIED, rank=4)
    data = _sft_data(np.random.default_rng(2), [10, 8])
    for _ in range(2):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(AdamParams(learning_rate=5e-2))
    path = client.save_weights_for_sampler("tied").result()
    sampler = client.create_sampling_client(path).result()
    response = sampler.sample(ModelInput.from_tokens([1, 2]), 2, SamplingParams(max_tokens=6, seed=0)).result()
    for sequence in response.sequences:
        full = np.concatenate([[1, 2], sequence.tokens_T])
        datum = Datum(
            model_input=ModelInput.from_tokens(full[:-1]), target_tokens_T=full[1:], weights_T=np.ones(full.size - 1)
        )
        lp = client.forward([datum], "cross_entropy").result().logprobs_D[0]
        np.testing.assert_allclose(sequence.logprobs_T, lp[1:], atol=1e-4)


# ---- checkpoints -----------------------------------------------------------------------------------------------


def _train(client: LocalTrainingClient, batches: Sequence[list[Datum]], params: AdamParams) -> None:
    for batch in batches:
        client.forward_backward(batch, "cross_entropy")
        client.optim_step(params)


@settings(max_examples=3, deadline=None)
@given(k=st.integers(1, 3), full=st.booleans())
def test_resume_is_exact(backend: LocalBackend, k: int, full: bool) -> None:
    rng = np.random.default_rng(11)
    batches = [_sft_data(rng, [6, 9]) for _ in range(4)]
    params = AdamParams(learning_rate=2e-2, weight_decay=0.1, grad_clip_norm=1.0)

    def create(local: LocalBackend) -> LocalTrainingClient:
        if full:
            return local.create_full_training_client(TINY, seed=1).result()
        return _client(local, rank=4, seed=1)

    straight = create(backend)
    _train(straight, batches, params)

    first = create(backend)
    _train(first, batches[:k], params)
    path = first.save_state(f"step{k}-{full}-{rng.integers(1 << 30)}").result()
    with LocalBackend(checkpoint_dir=backend.checkpoint_dir, device="cpu") as fresh_backend:
        resumed = fresh_backend.create_training_client_from_state(path, with_optimizer=True).result()
        assert resumed.optimizer_steps == k
        _train(resumed, batches[k:], params)
        a, b = straight.get_trainable_parameters().result(), resumed.get_trainable_parameters().result()
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)
        sa, sb = straight.get_optimizer_state().result(), resumed.get_optimizer_state().result()
        assert sa.keys() == sb.keys()
        for name in sa:
            np.testing.assert_allclose(sa[name], sb[name], rtol=1e-5, atol=1e-9)


def test_load_state_with_and_without_optimizer(backend: LocalBackend) -> None:
    client = _client(backend, rank=4, seed=2)
    batch = _sft_data(np.random.default_rng(3), [8])
    _train(client, [batch, batch], AdamParams(learning_rate=1e-2))
    state = client.save_state("two-steps").result()
    sampler_path = client.save_weights_for_sampler("two-steps").result()
    weights = client.get_trainable_parameters().result()
    _train(client, [batch], AdamParams(learning_rate=1e-2))

    client.load_state(state, with_optimizer=False).result()
    assert client.optimizer_steps == 0
    assert client.get_optimizer_state().result() == {}
    for name, value in client.get_trainable_parameters().result().items():
        np.testing.assert_array_equal(value, weights[name])
    client.load_state(state).result()
    assert client.optimizer_steps == 2
    assert client.get_optimizer_state().result()
    with pytest.raises(CheckpointError, match="no optimizer state"):
        client.load_state(sampler_path, with_optimizer=True).result()
    other = _client(backend, rank=8)
    with pytest.raises(ConfigError, match="rank"):
        other.load_state(state).result()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        client.load_state(str(LocalPath(client.run_id, "weights", "never-saved"))).result()


def test_checkpoint_layout_is_atomic_and_peft_compatible(backend: LocalBackend) -> None:
    import json

    client = _client(backend, rank=4, seed=4)
    state = client.save_state("layout").result()
    parsed = LocalPath.parse(state)
    assert state == f"local://{client.run_id}/weights/layout"
    directory = parsed.directory(backend.checkpoint_dir)
    assert sorted(p.name for p in directory.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "checkpoint.json",
        "optimizer.safetensors",
    ]
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["r"] == 4
    assert config["lora_alpha"] == 32
    assert "q_proj" in config["target_modules"]
    from safetensors.numpy import load_file

    keys = load_file(str(directory / "adapter_model.safetensors")).keys()
    assert all(key.startswith("base_model.model.") and ".lora_" in key for key in keys)
    with pytest.raises(ConfigError, match="already exists"):
        client.save_state("layout").result()
    assert client.save_state("layout", overwrite=True).result() == state
    sampler = client.save_weights_for_sampler("layout").result()
    assert sampler == f"local://{client.run_id}/sampler_weights/layout"
    assert not (LocalPath.parse(sampler).directory(backend.checkpoint_dir) / "optimizer.safetensors").exists()


def test_saved_adapter_loads_in_peft(backend: LocalBackend) -> None:
    """adapter_model.safetensors + adapter_config.json are a peft adapter: PeftModel computes the same logprobs."""
    import warnings

    from peft import PeftModel

    client = _client(backend, rank=4, seed=7)
    data = _sft_data(np.random.default_rng(8), [10])
    _train(client, [data, data], AdamParams(learning_rate=1e-2))
    path = client.save_weights_for_sampler("peft").result()
    expected = client.forward(data, "cross_entropy").result().logprobs_D[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(
            backend.base_model(TINY).build(), str(LocalPath.parse(path).directory(backend.checkpoint_dir))
        )
    ids = torch.tensor(data[0].model_input.to_tokens())[None]
    logits = model(input_ids=ids).logits[0]
    targets = torch.tensor(data[0].target_tokens_T)[:, None]
    got = torch.log_softmax(logits, -1).gather(1, targets)[:, 0].detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


# ---- ordering and async ----------------------------------------------------------------------------------------


def test_requests_apply_in_submission_order(backend: LocalBackend) -> None:
    client = _client(backend, rank=4, seed=5)
    data = _sft_data(np.random.default_rng(4), [10])
    before = client.forward(data, "cross_entropy")
    step = client.forward_backward(data, "cross_entropy")
    client.optim_step(AdamParams(learning_rate=1e-2))
    after = client.forward(data, "cross_entropy")
    path = client.save_weights_for_sampler("ordered")
    sampler = client.create_sampling_client(path.result())  # submitted before the earlier futures were awaited
    assert before.result().loss == pytest.approx(step.result().loss)
    assert after.result().loss < before.result().loss
    prompt = ModelInput.from_tokens(data[0].model_input.to_tokens())
    scored = sampler.result().compute_logprobs(prompt).result()
    np.testing.assert_allclose(scored[1:], after.result().logprobs_D[0][:-1], atol=1e-4)


def test_async_usage(backend: LocalBackend) -> None:
    async def main() -> float:
        client = await backend.create_lora_training_client(TINY, rank=2, seed=0)
        data = _sft_data(np.random.default_rng(9), [6])
        forward_backward = client.forward_backward(data, "cross_entropy")
        optim = client.optim_step(AdamParams(learning_rate=1e-2))
        output, _ = await asyncio.gather(forward_backward.result_async(), optim.result_async())
        sampler = await client.save_weights_and_get_sampling_client()
        response = await sampler.sample(ModelInput.from_tokens([1]), 2, SamplingParams(max_tokens=3, seed=1))
        assert len(response.sequences) == 2
        return output.loss

    assert asyncio.run(main()) > 0


def test_model_info_and_tokenizer(backend: LocalBackend) -> None:
    client = _client(backend, rank=4)
    info = client.get_info()
    assert (info.base_model, info.is_lora, info.lora_rank, info.vocab_size, info.max_context) == (
        TINY,
        True,
        4,
        300,
        64,
    )
    tokenizer = client.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"
    assert tokenizer.eos_token_id == 257
    assert isinstance(tokenizer, Tokenizer)
    assert backend.get_tokenizer(TINY) is tokenizer  # the loaded model's own tokenizer


def test_backend_tokenizer_without_loading_weights(tmp_path: pathlib.Path) -> None:
    with LocalBackend(checkpoint_dir=tmp_path, device="cpu") as fresh:
        tokenizer = fresh.get_tokenizer("tiny-qwen3:vocab=400")
        assert isinstance(tokenizer, Tokenizer)
        assert (tokenizer.vocab_size, tokenizer.bos_token_id, tokenizer.eos_token_id) == (400, 256, 257)
        assert fresh.get_tokenizer("tiny-qwen3:vocab=400") is tokenizer
        with pytest.raises(ConfigError):
            fresh.get_tokenizer("")


# ---- bad input: typed errors, raised at submission, weights unchanged ------------------------------------------


def test_bad_input_raises_before_any_weight_changes(backend: LocalBackend) -> None:
    client = _client(backend, rank=4, seed=6)
    weights = client.get_trainable_parameters().result()
    good = _sft_data(np.random.default_rng(5), [6])[0]
    policy_without_advantages = Datum(
        model_input=good.model_input, target_tokens_T=good.target_tokens_T, logprobs_T=np.zeros(good.length)
    )
    long_tokens = np.arange(65) % 300
    cases = [
        (ValidationError, lambda: client.forward_backward([good, policy_without_advantages], "ppo")),
        (ValidationError, lambda: client.forward_backward([good], "importance_sampling")),
        (ConfigError, lambda: client.forward_backward([good], "reinforce++")),  # type: ignore[arg-type]
        (ConfigError, lambda: client.forward_backward([good], "dro")),  # no beta
        (ValidationError, lambda: client.forward_backward([good], "gspo")),  # no logprobs / advantages / ratio mask
        (ConfigError, lambda: client.forward_backward([good], "stable_reinforce")),  # no published formula
        (ValidationError, lambda: client.forward_backward([], "cross_entropy")),
        (
            ValidationError,
            lambda: client.forward_backward(
                [Datum(model_input=ModelInput.from_tokens([1, 300]), target_tokens_T=[2, 3], weights_T=[1, 1])],
                "cross_entropy",
            ),
        ),
        (
            ValidationError,
            lambda: client.forward_backward(
                [Datum(model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 999], weights_T=[1, 1])],
                "cross_entropy",
            ),
        ),
        (
            ValidationError,
            lambda: client.forward_backward(
                [
                    Datum(
                        model_input=ModelInput.from_tokens(long_tokens),
                        target_tokens_T=long_tokens,
                        weights_T=np.ones(65),
                    )
                ],
                "cross_entropy",
            ),
        ),
        (ValidationError, lambda: client.forward_backward_custom([good], "not callable")),  # type: ignore[arg-type]
        (ValidationError, lambda: client.optim_step({"learning_rate": 1.0})),  # type: ignore[arg-type]
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    with pytest.raises(ShapeError):  # a datum whose arrays disagree in length cannot even be built
        Datum(model_input=ModelInput.from_tokens([1, 2, 3]), target_tokens_T=[2, 3], weights_T=[1.0, 1.0])
    client.optim_step(AdamParams(learning_rate=0.0)).result()  # a zero-rate step: Adam state moves, weights stay
    for name, value in client.get_trainable_parameters().result().items():
        np.testing.assert_array_equal(value, weights[name])
    assert all(not g.any() for g in client.get_gradients().result().values())

    sampler = client.save_weights_and_get_sampling_client().result()
    with pytest.raises(ValidationError, match="vocabulary"):
        sampler.sample(ModelInput.from_tokens([1, 300]), 1, SamplingParams(max_tokens=2))
    with pytest.raises(ValidationError, match="context"):
        sampler.sample(ModelInput.from_tokens(long_tokens), 1, SamplingParams(max_tokens=2))
    with pytest.raises(ValidationError, match="context"):
        sampler.sample(ModelInput.from_tokens(np.arange(60)), 1, SamplingParams(max_tokens=10))
    with pytest.raises(ValidationError, match="context"):
        sampler.compute_logprobs(ModelInput.from_tokens(long_tokens))
    with pytest.raises(ValidationError, match="empty"):
        sampler.sample(ModelInput.empty(), 1, SamplingParams(max_tokens=2))
    with pytest.raises(ConfigError):
        sampler.sample(ModelInput.from_tokens([1]), 0, SamplingParams(max_tokens=2))
    with pytest.raises(ValidationError, match="not a valid name"):
        client.save_state("../escape")
    with pytest.raises(ValidationError, match="local://"):
        client.load_state("tinker://run/weights/x")


def test_backend_argument_errors(backend: LocalBackend) -> None:
    with pytest.raises(ConfigError):
        backend.create_lora_training_client(TINY, rank=0)
    with pytest.raises(ConfigError):
        backend.create_lora_training_client(TINY, train_attn=False, train_mlp=False, train_unembed=False)
    with pytest.raises(ConfigError):
        backend.create_sampling_client()
    with pytest.raises(ConfigError):
        backend.create_lora_training_client("tiny-llama:hidden=33,heads=4", rank=2).result()
    with pytest.raises(ConfigError, match="cannot load"):
        backend.create_lora_training_client(str(pathlib.Path("/nonexistent/model")), rank=2).result()
    base = backend.create_sampling_client(base_model=TINY).result()
    assert base.get_base_model() == TINY


def test_lora_targets_follow_flags(backend: LocalBackend) -> None:
    attn_only = _client(backend, rank=2, train_mlp=False, train_unembed=False)
    names = attn_only.get_trainable_parameters().result().keys()
    assert names
    assert all(any(p in n for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in names)
    everything = _client(backend, rank=2)
    assert any(n.startswith("lm_head.") for n in everything.get_trainable_parameters().result())
    full = backend.create_full_training_client(TINY, seed=0).result()
    assert not full.get_info().is_lora
    assert "model.embed_tokens.weight" in full.get_trainable_parameters().result()


def test_sdk_datums_are_accepted_and_give_the_same_result(backend64: LocalBackend) -> None:
    """SDK-style code passes ``tinker.types.Datum``: the local client converts it and computes the same thing."""
    from tinkerflow.interop import datum_to_tinker

    client = _client(backend64, seed=3)
    data = _sft_data(np.random.default_rng(5), [5, 9])
    ours = client.forward(data, "cross_entropy").result()
    theirs = client.forward([datum_to_tinker(datum) for datum in data], "cross_entropy").result()  # type: ignore[misc]
    assert theirs.metrics == ours.metrics
    for mine, sdk in zip(ours.logprobs_D, theirs.logprobs_D, strict=True):
        np.testing.assert_array_equal(mine, sdk)
    mixed = client.forward_backward([data[0], datum_to_tinker(data[1])], "cross_entropy").result()  # type: ignore[list-item]
    assert mixed.metrics["loss:sum"] == pytest.approx(ours.metrics["loss:sum"], rel=1e-12)
