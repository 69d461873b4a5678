"""Continuous batching in the local sampler, on a tiny model: a request's tokens do not depend on what is batched
with it, sampled logprobs equal a forward pass under batching, requests join between decode steps and leave one by
one, a multi-sample prompt is prefilled once, errors fail only the requests concerned, and close drains."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow import ModelInput, SamplingParams
from tinkerflow.errors import ValidationError
from tinkerflow.sampling import SampleResponse

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tinkerflow.shell.backends.local import LocalBackend, LocalSamplingClient  # noqa: E402  (after importorskip)
from tinkerflow.shell.backends.local import scheduler as scheduler_module  # noqa: E402
from tinkerflow.shell.backends.local.invariant import (  # noqa: E402
    ROW_MULTIPLE,
    padded_rows,
    prefill_width,
    row_attention,
    row_lengths,
)
from tinkerflow.shell.backends.local.scheduler import (  # noqa: E402
    PREFILL_PADDING,
    PREFILL_TOKENS,
    SampleRequest,
    _prefill_groups,
)
from tinkerflow.shell.backends.protocol import APIFuture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=256"
VOCAB = 300


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("ckpt"), device="cpu") as local:
        yield local


@pytest.fixture
def sampler(backend: LocalBackend) -> Iterator[LocalSamplingClient]:
    client = backend.create_sampling_client(base_model=TINY).result()
    assert isinstance(client, LocalSamplingClient)
    yield client
    client.close()


@contextmanager
def held(sampler: LocalSamplingClient) -> Iterator[None]:
    """Hold the sampler's engine thread (a job that waits) so that what is submitted inside is admitted at once."""
    gate, started = threading.Event(), threading.Event()

    def wait() -> None:
        started.set()
        gate.wait()

    blocker = sampler.scheduler.submit_job(wait)
    assert started.wait(timeout=60)
    try:
        yield
    finally:
        gate.set()
        blocker.result()


def _sample(sampler: LocalSamplingClient, prompt: list[int], num: int, params: SamplingParams) -> APIFuture[Any]:
    return sampler.sample(ModelInput.from_tokens(prompt), num, params)


def _tokens(response: SampleResponse) -> list[list[int]]:
    return [sequence.tokens_T.tolist() for sequence in response.sequences]


def _others(rng: np.random.Generator, count: int) -> list[tuple[list[int], int, SamplingParams]]:
    """Varied requests: prompt lengths, sample counts, temperatures, top-k/top-p, max_tokens, stop tokens."""
    others = []
    for _ in range(count):
        prompt = rng.integers(0, VOCAB, int(rng.integers(1, 30))).tolist()
        params = SamplingParams(
            max_tokens=int(rng.integers(1, 20)),
            temperature=float(rng.choice([0.0, 0.5, 1.0, 2.0])),
            top_k=int(rng.choice([-1, 3])),
            top_p=float(rng.choice([1.0, 0.8])),
            seed=int(rng.integers(0, 1000)),
            stop_tokens=tuple(int(t) for t in rng.integers(0, VOCAB, int(rng.integers(0, 3)))),
        )
        others.append((prompt, int(rng.integers(1, 4)), params))
    return others


@settings(max_examples=8, deadline=None)
@given(
    prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40),
    num_samples=st.integers(1, 3),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
    top_k=st.sampled_from([-1, 5]),
    top_p=st.sampled_from([1.0, 0.9]),
    seed=st.integers(0, 2**40),
    others_seed=st.integers(0, 2**31),
)
def test_a_request_gets_the_same_bits_alone_and_inside_a_batch_of_16(
    backend: LocalBackend,
    prompt: list[int],
    num_samples: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    others_seed: int,
) -> None:
    client = backend.create_sampling_client(base_model=TINY).result()
    assert isinstance(client, LocalSamplingClient)
    sizes: list[int] = []
    client.scheduler.on_step = sizes.append
    params = SamplingParams(max_tokens=16, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    alone = _sample(client, prompt, num_samples, params).result()
    others = _others(np.random.default_rng(others_seed), 16)
    with held(client):
        before = [_sample(client, *other) for other in others[:8]]
        inside = _sample(client, prompt, num_samples, params)
        after = [_sample(client, *other) for other in others[8:]]
    batched = inside.result()
    for future in before + after:
        future.result()
    client.close()
    assert client.scheduler.batch_invariant  # this machine's kernels passed the probe
    assert max(sizes) >= 16 + num_samples  # they did run as one batch
    assert _tokens(batched) == _tokens(alone)
    for mine, reference in zip(batched.sequences, alone.sequences, strict=True):
        assert mine.stop_reason == reference.stop_reason
        np.testing.assert_array_equal(mine.logprobs_T, reference.logprobs_T)  # bit for bit


def _forward_logprobs(model: torch.nn.Module, tokens: list[int]) -> np.ndarray:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].float()
    return torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(tokens[1:])[:, None])[:, 0].numpy()


@settings(max_examples=4, deadline=None)
@given(others_seed=st.integers(0, 2**31))
@pytest.mark.parametrize("deterministic", [True, False])
def test_sampled_logprobs_equal_a_forward_pass_under_batching(
    backend: LocalBackend, others_seed: int, deterministic: bool
) -> None:
    """Batch-invariant or not (``deterministic=False``: the model's own attention over left-padded prompts and
    rows), each sampled token's logprob is a plain forward pass's of the same weights."""
    model = backend.base_model(TINY).build()
    client = LocalSamplingClient(
        backend.base_model(TINY), backend.base_model(TINY).build(), "t", deterministic=deterministic
    )
    requests = _others(np.random.default_rng(others_seed), 16)
    with held(client):
        futures = [_sample(client, *request) for request in requests]
    for (prompt, num_samples, params), future in zip(requests, futures, strict=True):
        response = future.result()
        assert len(response.sequences) == num_samples
        for sequence in response.sequences:
            tokens = sequence.tokens_T.tolist()
            assert 1 <= len(tokens) <= (params.max_tokens or 0)
            if sequence.stop_reason == "stop":
                assert tokens[-1] in params.stop_tokens
                assert not set(tokens[:-1]) & set(params.stop_tokens)
            else:
                assert len(tokens) == params.max_tokens
                assert not set(tokens) & set(params.stop_tokens)
            reference = _forward_logprobs(model, prompt + tokens)[len(prompt) - 1 :]
            np.testing.assert_allclose(sequence.logprobs_T, reference, atol=1e-4)
    client.close()


def test_requests_join_between_decode_steps_and_leave_one_by_one(sampler: LocalSamplingClient) -> None:
    long_params = SamplingParams(max_tokens=60, temperature=1.0, seed=7)
    short_params = SamplingParams(max_tokens=4, temperature=1.0, seed=8)
    long_alone = _sample(sampler, [1, 2, 3], 1, long_params).result()
    short_alone = _sample(sampler, [9, 8, 7, 6, 5], 2, short_params).result()
    sizes: list[int] = []
    late: list[APIFuture[Any]] = []

    def on_step(rows: int) -> None:
        sizes.append(rows)
        if len(sizes) == 5:  # the long request is mid-decode: a short one arrives
            late.append(_sample(sampler, [9, 8, 7, 6, 5], 2, short_params))

    sampler.scheduler.on_step = on_step
    long = _sample(sampler, [1, 2, 3], 1, long_params)
    long_response = long.result()
    short_response = late[0].result()
    # alone for 5 steps, then 1 + 2 rows until the short request's 4 tokens are drawn, then alone again
    assert sizes[:5] == [1] * 5
    assert sizes[5:8] == [3] * 3
    assert set(sizes[8:]) == {1}
    assert len(sizes) == 59  # 60 tokens, the last needs no decode step
    assert _tokens(long_response) == _tokens(long_alone)
    assert _tokens(short_response) == _tokens(short_alone)


def test_a_multi_sample_prompt_is_prefilled_once_and_its_samples_stop_individually(
    sampler: LocalSamplingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = [4, 5, 6, 7, 8, 9]
    free_params = SamplingParams(max_tokens=24, temperature=1.5, seed=11)
    free = _sample(sampler, prompt, 8, free_params).result()
    counts: dict[int, int] = {}
    for sequence in free.sequences:
        for token in set(sequence.tokens_T.tolist()):
            counts[token] = counts.get(token, 0) + 1
    stop = max(counts, key=lambda token: (0 < counts[token] < 8, counts[token]))  # some samples hit it, not all
    shapes: list[tuple[int, ...]] = []
    forward = sampler.scheduler._forward

    def spy(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(ids.shape))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(sampler.scheduler, "_forward", spy)
    stopped_params = SamplingParams(max_tokens=24, temperature=1.5, seed=11, stop_tokens=(stop,))
    stopped = _sample(sampler, prompt, 8, stopped_params).result()
    width = prefill_width(len(prompt)) if sampler.scheduler.batch_invariant else len(prompt)
    assert shapes[0] == (1, width)  # one prefill of the prompt for the 8 samples
    assert all(shape[1] == 1 for shape in shapes[1:])
    assert [shape[0] for shape in shapes[1:]] == sorted((shape[0] for shape in shapes[1:]), reverse=True)
    assert len({shape[0] for shape in shapes[1:]}) > 1  # stopped samples left the batch
    for mine, whole in zip(stopped.sequences, free.sequences, strict=True):
        tokens = whole.tokens_T.tolist()
        end = tokens.index(stop) + 1 if stop in tokens else len(tokens)
        assert mine.tokens_T.tolist() == tokens[:end]  # a sample's tokens do not depend on its siblings stopping
        assert mine.stop_reason == ("stop" if stop in tokens else "length")
        np.testing.assert_allclose(mine.logprobs_T, whole.logprobs_T[:end], atol=1e-5)


def test_stop_strings_end_sequences_individually(sampler: LocalSamplingClient) -> None:
    tokenizer = sampler.get_tokenizer()
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=5)
    free = _sample(sampler, [65, 66], 6, params).result()
    texts = [tokenizer.decode(sequence.tokens_T.tolist()) for sequence in free.sequences]
    stop_text = texts[0][3:5]
    stopped = _sample(
        sampler, [65, 66], 6, SamplingParams(max_tokens=30, temperature=1.0, seed=5, stop_strings=(stop_text,))
    )
    for mine, text in zip(stopped.result().sequences, texts, strict=True):
        decoded = tokenizer.decode(mine.tokens_T.tolist())
        assert text.startswith(decoded)
        if mine.stop_reason == "stop":
            assert stop_text in decoded
            assert stop_text not in tokenizer.decode(mine.tokens_T[:-1].tolist())
        else:
            assert stop_text not in decoded
            assert mine.tokens_T.size == 30


def test_a_failing_step_fails_its_requests_and_the_client_goes_on(
    sampler: LocalSamplingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.0)
    expected = _tokens(_sample(sampler, [1, 2], 2, params).result())
    forward: Callable[..., Any] = sampler.scheduler._forward
    calls = {"n": 0}

    def flaky(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the second decode step of the batch
            raise RuntimeError("out of memory (simulated)")
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(sampler.scheduler, "_forward", flaky)
    with held(sampler):
        first = _sample(sampler, [1, 2], 2, params)
        second = _sample(sampler, [3, 4, 5], 1, params)
    for future in (first, second):
        with pytest.raises(RuntimeError, match="simulated"):
            future.result(timeout=60)
    assert _tokens(_sample(sampler, [1, 2], 2, params).result(timeout=60)) == expected


def test_close_finishes_queued_requests_then_refuses_new_ones(backend: LocalBackend) -> None:
    client = backend.create_sampling_client(base_model=TINY).result()
    assert isinstance(client, LocalSamplingClient)
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=1)
    futures = [_sample(client, [i + 1], 1, params) for i in range(5)]
    scored = client.compute_logprobs(ModelInput.from_tokens([1, 2, 3]))
    client.close()
    assert all(future.done() for future in [*futures, scored])
    assert all(future.result().sequences[0].tokens_T.size == 6 for future in futures)
    with pytest.raises(ValidationError, match="closed"):
        _sample(client, [1], 1, params)


def test_concurrent_server_requests_are_batched_and_match_the_local_sampler(
    backend: LocalBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tinker = pytest.importorskip("tinker")
    import tinker.types as tt

    from tinkerflow import interop
    from tinkerflow.shell.serve.server import ServerConfig, ServerThread

    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    local = backend.create_sampling_client(base_model=TINY).result()
    requests = _others(np.random.default_rng(3), 12)
    with ServerThread(ServerConfig(store=tmp_path / "store", device="cpu")) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key=server.config.api_key)
        remote = service.create_sampling_client(base_model=TINY).result()
        served = server.engine.samplers.get(remote._sampling_session_id).result()
        assert isinstance(served, LocalSamplingClient)
        sizes: list[int] = []
        with held(served):  # the server's sampler is busy while the requests arrive
            served.scheduler.on_step = sizes.append
            futures = [
                remote.sample(tt.ModelInput.from_ints(prompt), num, interop.sampling_params_to_tinker(params))
                for prompt, num, params in requests
            ]
            for _ in range(6000):  # until every request has reached the sampler (a minute at most)
                if served.scheduler.queued() == len(requests):
                    break
                threading.Event().wait(0.01)
        got = [interop.sample_response_from_tinker(future.result(timeout=120)) for future in futures]
        service.close("success").result(timeout=30)
    assert max(sizes) == sum(num for _, num, _ in requests)  # all of them in one batch
    for (prompt, num, params), response in zip(requests, got, strict=True):
        want = _sample(local, prompt, num, params).result()
        assert _tokens(response) == _tokens(want)
        for mine, reference in zip(response.sequences, want.sequences, strict=True):
            np.testing.assert_allclose(mine.logprobs_T, reference.logprobs_T, atol=1e-5)
    local.close()


def _max_rows_of_16_requests(client: LocalSamplingClient) -> int:
    sizes: list[int] = []
    client.scheduler.on_step = sizes.append
    requests = _others(np.random.default_rng(3), 16)
    with held(client):
        futures = [_sample(client, *request) for request in requests]
    for future in futures:
        future.result()
    client.close()
    return max(sizes)


@pytest.mark.parametrize("deterministic", [True, False])
def test_without_invariant_kernels_a_deterministic_client_serves_one_request_at_a_time(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, deterministic: bool
) -> None:
    monkeypatch.setattr(scheduler_module, "rows_are_invariant", lambda model, rows, **limits: False)
    model = backend.base_model(TINY).build()
    client = LocalSamplingClient(backend.base_model(TINY), model, "test", deterministic=deterministic)
    largest = _max_rows_of_16_requests(client)
    assert client.scheduler.batch_invariant is False
    if deterministic:
        assert largest <= 3  # one request's samples at a time
    else:
        assert largest > 16  # batched anyway (equal up to rounding)


def test_the_engine_pads_decode_rows_to_a_multiple_of_four(backend: LocalBackend) -> None:
    client = backend.create_sampling_client(base_model=TINY).result()
    assert isinstance(client, LocalSamplingClient)
    rows: list[int] = []
    original = client.scheduler._forward

    def counting(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if ids.shape[1] == 1:  # a decode step (a prefill's rows are prompts, its row count is width x prompts)
            rows.append(int(ids.shape[0]))
        return original(ids, *args, **kwargs)

    client.scheduler._forward = counting  # type: ignore[method-assign]  # observe the row counts the model sees
    _max_rows_of_16_requests(client)
    decode = [count for count in rows if count > 1]  # not the engine's one-token probe of the cache
    assert max(decode) > ROW_MULTIPLE
    assert all(count % ROW_MULTIPLE == 0 for count in decode), decode


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(0, 200))
def test_padded_rows_is_the_next_multiple_of_four(rows: int) -> None:
    padded = padded_rows(rows)
    assert padded % ROW_MULTIPLE == 0
    assert rows <= padded < rows + ROW_MULTIPLE


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_row_attention_equals_each_row_alone_and_sdpa_up_to_rounding(lengths: list[int], seed: int) -> None:
    """Rows left-padded to one length: each row's output equals its own keys alone, bit for bit, and a masked SDPA."""
    generator = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim, width = 4, 2, 8, max(lengths)
    query = torch.randn(len(lengths), heads, 1, dim, generator=generator)
    key = torch.randn(len(lengths), kv_heads, width, dim, generator=generator)
    value = torch.randn(len(lengths), kv_heads, width, dim, generator=generator)
    module = torch.nn.Module()
    with row_lengths(lengths):
        batched, _ = row_attention(module, query, key, value, None, scaling=0.5)
    for row, length in enumerate(lengths):
        with row_lengths([length]):
            alone, _ = row_attention(
                module,
                query[row : row + 1],
                key[row : row + 1, :, width - length :],
                value[row : row + 1, :, width - length :],
                None,
                scaling=0.5,
            )
        assert torch.equal(batched[row : row + 1], alone)
        mask = torch.zeros(1, 1, 1, width, dtype=torch.bool)
        mask[..., width - length :] = True
        reference = torch.nn.functional.scaled_dot_product_attention(
            query[row : row + 1], key[row : row + 1], value[row : row + 1], attn_mask=mask, scale=0.5, enable_gqa=True
        ).transpose(1, 2)
        torch.testing.assert_close(alone, reference, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 5)), min_size=1, max_size=5),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    seed=st.integers(0, 2**31),
)
def test_decode_rows_of_one_length_attend_in_one_call_with_each_rows_bits(
    runs: list[tuple[int, int]], dtype: str, seed: int
) -> None:
    """A decode step's consecutive rows of one key length (a request's samples, prompts of one length admitted
    together) share one SDPA call, and each row still gets the bits it gets alone."""
    lengths = [length for length, count in runs for _ in range(count)]
    generator = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim, width = 9, 3, 64, max(lengths)
    query, key, value = (
        torch.randn(len(lengths), count, size, dim, generator=generator).to(getattr(torch, dtype))
        for count, size in ((heads, 1), (kv_heads, width), (kv_heads, width))
    )
    calls: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(q: torch.Tensor, *args: object, **kwargs: Any) -> torch.Tensor:
        calls.append(q.shape[0])
        return sdpa(q, *args, **kwargs)

    from tinkerflow.shell.backends.local import invariant

    assert invariant._runs_are_invariant(query, key, heads // kv_heads)  # this machine's SDPA passes the probe
    module = torch.nn.Module()
    with row_lengths(lengths), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        batched, _ = row_attention(module, query, key, value, None, scaling=0.125)
    expected = [len(list(run)) for _, run in itertools.groupby(lengths)]
    assert calls == expected  # one call per run of equal lengths, holding the run's rows
    for row, length in enumerate(lengths):
        with row_lengths([length]):
            alone, _ = row_attention(
                module,
                query[row : row + 1],
                key[row : row + 1, :, width - length :].contiguous(),
                value[row : row + 1, :, width - length :].contiguous(),
                None,
                scaling=0.125,
            )
        assert torch.equal(batched[row : row + 1], alone)


def test_without_invariant_runs_decode_rows_attend_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the probe finds a run's rows differ from each alone, every row gets its own call."""
    from tinkerflow.shell.backends.local import invariant

    query, key, value = torch.randn(4, 4, 1, 8), torch.randn(4, 2, 6, 8), torch.randn(4, 2, 6, 8)
    monkeypatch.setattr(invariant, "_runs_are_invariant", lambda *args: False)
    calls: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda q, *a, **k: calls.append(q.shape[0]) or sdpa(q, *a, **k),
    )
    with row_lengths([6, 6, 6, 6]):
        row_attention(torch.nn.Module(), query, key, value, None, scaling=0.5)
    assert calls == [1, 1, 1, 1]


@settings(max_examples=10, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), seed=st.integers(0, 2**31))
def test_a_left_padded_prefill_attends_each_prompt_as_alone(lengths: list[int], seed: int) -> None:
    """Prefill rows (as many queries as keys, left-padded): each prompt's outputs equal its own causal attention
    alone, bit for bit; the padding positions' outputs are zeros."""
    generator = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim, width = 4, 2, 8, prefill_width(max(lengths))
    query = torch.randn(len(lengths), heads, width, dim, generator=generator)
    key = torch.randn(len(lengths), kv_heads, width, dim, generator=generator)
    value = torch.randn(len(lengths), kv_heads, width, dim, generator=generator)
    module = torch.nn.Module()
    with row_lengths(lengths):
        batched, _ = row_attention(module, query, key, value, None, scaling=0.5)
    assert batched.shape == (len(lengths), width, heads, dim)
    for row, length in enumerate(lengths):
        start = width - length
        with row_lengths(None):
            alone, _ = row_attention(
                module,
                query[row : row + 1, :, start:],
                key[row : row + 1, :, start:],
                value[row : row + 1, :, start:],
                None,
                scaling=0.5,
            )
        assert torch.equal(batched[row : row + 1, start:], alone)
        assert not batched[row, :start].any()


def test_prompts_admitted_together_share_prefill_passes(
    sampler: LocalSamplingClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve prompts of varied lengths queued together share prefill passes (grouped by length), not one each."""
    prefills: list[tuple[int, ...]] = []
    forward = sampler.scheduler._forward

    def spy(ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if ids.shape[1] > 1:
            prefills.append(tuple(ids.shape))
        return forward(ids, *args, **kwargs)

    monkeypatch.setattr(sampler.scheduler, "_forward", spy)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, VOCAB, int(rng.integers(2, 30))).tolist() for _ in range(12)]
    params = SamplingParams(max_tokens=3, temperature=0.0)
    with held(sampler):
        futures = [_sample(sampler, prompt, 1, params) for prompt in prompts]
    for future in futures:
        future.result()
    assert sum(count for count, _ in prefills) == 12
    assert len(prefills) < 6
    if sampler.scheduler.batch_invariant:
        assert all(width % ROW_MULTIPLE == 0 for _, width in prefills)


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 3000), max_size=40),
    scores=st.lists(st.booleans(), max_size=40),
    padded=st.booleans(),
)
def test_prefill_groups_partition_the_requests_within_the_budget(
    lengths: list[int], scores: list[bool], padded: bool
) -> None:
    requests = [
        SampleRequest(
            np.zeros(length, dtype=np.int64),
            1,
            SamplingParams(max_tokens=1),
            max_tokens=1,
            seed=0,
            prompt_scores=index < len(scores) and scores[index],
            topk=0,
            first_id=0,
        )
        for index, length in enumerate(lengths)
    ]
    groups = _prefill_groups(requests, padded)
    assert sorted(id(request) for group in groups for request in group) == sorted(id(r) for r in requests)
    for group in groups:
        assert all(group)
        if any(request.prompt_scores for request in group):
            assert len(group) == 1
        widths = [prefill_width(r.tokens.size) if padded else r.tokens.size for r in group]
        real = sum(r.tokens.size for r in group)
        assert len(group) == 1 or max(widths) * len(group) <= min(PREFILL_TOKENS, (1 + PREFILL_PADDING) * real)


WIDER = "tiny-llama:hidden=128,layers=2,heads=4,kv_heads=2,intermediate=256,vocab=300,context=256"


def test_the_same_bits_with_two_threads_and_repeated_prompts(backend: LocalBackend) -> None:
    """Two intra-op threads, head dimension 32 and requests sharing prompt lengths: the shapes where batched
    attention kernels stop being row-invariant (measured: one SDPA call over the rows of one length changes the
    bits here, and this test fails with it), so the engine must still attend row by row."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        client = backend.create_sampling_client(base_model=WIDER).result()
        assert isinstance(client, LocalSamplingClient)
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, VOCAB, int(rng.integers(5, 40))).tolist() for _ in range(4)]
        prompts += [prompts[0]] * 2 + [prompts[1]] * 2
        params = [SamplingParams(max_tokens=8, temperature=1.0, seed=seed) for seed in range(len(prompts))]
        alone = [_sample(client, prompt, 1, p).result() for prompt, p in zip(prompts, params, strict=True)]
        sizes: list[int] = []
        client.scheduler.on_step = sizes.append
        with held(client):
            futures = [_sample(client, prompt, 1, p) for prompt, p in zip(prompts, params, strict=True)]
        batched = [future.result() for future in futures]
        client.close()
    finally:
        torch.set_num_threads(threads)
    assert max(sizes) == len(prompts)
    for mine, reference in zip(batched, alone, strict=True):
        assert _tokens(mine) == _tokens(reference)
        np.testing.assert_array_equal(mine.sequences[0].logprobs_T, reference.sequences[0].logprobs_T)
