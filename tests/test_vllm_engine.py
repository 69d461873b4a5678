"""The vLLM sampling engine of the local backend (``LocalBackend(sampling_engine="vllm")``), on CPU against a fake
of vLLM 0.33.0's API (``tests/fake_vllm``: the names and structures of the real source, computing with transformers
and peft): the same tokens and logprobs as the local engine on the same LoRA checkpoint, requests batched together,
stops per sequence, prompt logprobs, adapter refresh by checkpoint identity, typed errors and a clean close. It has
never run against the real vLLM here (no GPU)."""

from __future__ import annotations

import pathlib
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams
from tinkerflow.errors import ConfigError, ValidationError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tinkerflow.shell.backends.local import (  # noqa: E402  (after importorskip)
    LocalBackend,
    LocalSamplingClient,
    vllm_engine,
)
from tinkerflow.shell.backends.local.vllm_engine import VllmSamplingClient  # noqa: E402
from tinkerflow.shell.backends.local.vllm_outputs import VllmRequestError, prompt_scores, to_response  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAKE = pathlib.Path(__file__).parent / "fake_vllm"
TINY = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=128"
GREEDY = SamplingParams(max_tokens=10, temperature=0.0)
PROMPTS = [[1, 2, 3, 4], [40, 41], [7, 8, 9, 10, 11, 12], [100], [5, 6, 7], [200, 201, 202, 203, 204]]


@pytest.fixture(scope="module")
def fake_vllm() -> Iterator[Any]:
    """The fake vllm package on ``sys.path`` for this module only; yields its ``AsyncLLM`` class."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(FAKE))
        from vllm.v1.engine.async_llm import AsyncLLM

        yield AsyncLLM
    for name in [name for name in sys.modules if name == "vllm" or name.startswith("vllm.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def backends(fake_vllm: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBackend, LocalBackend]]:
    """A local-engine backend and a vLLM-engine backend over one checkpoint directory (fp32 on the CPU)."""
    root = tmp_path_factory.mktemp("ckpt")
    with (
        LocalBackend(checkpoint_dir=root, device="cpu", dtype=torch.float32) as local,
        LocalBackend(checkpoint_dir=root, device="cpu", dtype=torch.float32, sampling_engine="vllm") as served,
    ):
        yield local, served


def _train(client: Any, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = []
    for length in (12, 9):
        tokens = rng.integers(0, 300, length + 1)
        data.append(
            Datum(
                model_input=ModelInput.from_tokens(tokens[:-1]),
                target_tokens_T=tokens[1:],
                weights_T=np.ones(length, dtype=np.float32),
            )
        )
    client.forward_backward(data, "cross_entropy")
    client.optim_step(AdamParams(learning_rate=5e-2)).result()


@pytest.fixture(scope="module")
def trained(backends: tuple[LocalBackend, LocalBackend]) -> tuple[Any, str]:
    """A LoRA run on every module kind the backend trains (attention, MLP, unembedding) after one step, saved."""
    local, _ = backends
    client = local.create_lora_training_client(TINY, rank=4, seed=0).result()
    _train(client, 0)
    return client, client.save_weights_for_sampler("first").result()


def _clients(backends: tuple[LocalBackend, LocalBackend], path: str) -> tuple[LocalSamplingClient, VllmSamplingClient]:
    local = backends[0].create_sampling_client(model_path=path).result()
    served = backends[1].create_sampling_client(model_path=path).result()
    assert isinstance(local, LocalSamplingClient)
    assert isinstance(served, VllmSamplingClient)
    return local, served


def _run(client: Any, prompt: list[int], params: SamplingParams, **kwargs: Any) -> Any:
    return client.sample(ModelInput.from_tokens(prompt), 1, params, **kwargs).result(timeout=120)


def test_greedy_tokens_equal_the_local_engine_and_logprobs_a_forward_pass(backends: Any, trained: Any) -> None:
    local, served = _clients(backends, trained[1])
    for prompt in PROMPTS[:3]:
        mine = _run(local, prompt, GREEDY).sequences[0]
        theirs = _run(served, prompt, GREEDY).sequences[0]
        np.testing.assert_array_equal(theirs.tokens_T, mine.tokens_T)
        assert theirs.stop_reason == mine.stop_reason == "length"
        full = ModelInput.from_tokens(prompt + [int(token) for token in theirs.tokens_T[:-1]])
        forward = local.compute_logprobs(full).result()[len(prompt) - 1 :]
        # the last token's logprob: a forward pass of the whole sequence
        last = local.compute_logprobs(ModelInput.from_tokens(prompt + list(map(int, theirs.tokens_T)))).result()
        np.testing.assert_allclose(theirs.logprobs_T[:-1], forward[1:], atol=1e-4)
        np.testing.assert_allclose(theirs.logprobs_T[-1], last[-1], atol=1e-4)
        np.testing.assert_allclose(theirs.logprobs_T, mine.logprobs_T, atol=1e-4)
    assert served.lora_request is not None
    assert served.lora_request.lora_path.endswith("sampler_weights/first")


def test_a_training_clients_samplers_come_from_the_backends_engine(backends: Any) -> None:
    """On a vLLM backend, a training client's ``create_sampling_client`` and ``save_weights_and_get_sampling_client``
    are vLLM clients too (the latter saves an ephemeral sampler checkpoint first), with the local engine's tokens;
    on a local backend the latter stays in memory (no checkpoint written)."""
    local, served = backends
    client = served.create_lora_training_client(TINY, rank=4, seed=3).result()
    _train(client, 3)
    path = client.save_weights_for_sampler("routed").result()
    by_path = client.create_sampling_client(path).result()
    current = client.save_weights_and_get_sampling_client().result()
    assert isinstance(by_path, VllmSamplingClient)
    assert isinstance(current, VllmSamplingClient)
    assert current.lora_request is not None
    assert "/sampler_weights/ephemeral-" in current.lora_request.lora_path
    assert len(list(served.checkpoint_dir.glob(f"{client.run_id}/sampler_weights/ephemeral-*"))) == 1
    reference = local.create_sampling_client(model_path=path).result()
    for prompt in PROMPTS[:2]:
        expected = _run(reference, prompt, GREEDY).sequences[0].tokens_T
        np.testing.assert_array_equal(_run(by_path, prompt, GREEDY).sequences[0].tokens_T, expected)
        np.testing.assert_array_equal(_run(current, prompt, GREEDY).sequences[0].tokens_T, expected)
    in_memory = local.create_lora_training_client(TINY, rank=4, seed=3).result()
    sampler_dirs = sorted(local.checkpoint_dir.glob(f"{in_memory.run_id}/sampler_weights/*"))
    assert isinstance(in_memory.save_weights_and_get_sampling_client().result(), LocalSamplingClient)
    assert sorted(local.checkpoint_dir.glob(f"{in_memory.run_id}/sampler_weights/*")) == sampler_dirs == []


def test_concurrent_calls_are_batched_together(backends: Any, trained: Any, fake_vllm: Any) -> None:
    local, served = _clients(backends, trained[1])
    engine = fake_vllm.instances[-1]
    prompts = [PROMPTS[index % len(PROMPTS)] + [index] for index in range(16)]
    results: list[Any] = [None] * 16
    gate = threading.Event()
    fake_vllm.step_gate = gate
    try:
        engine.max_in_flight = 0
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, _run(served, prompts[i], GREEDY)))
            for i in range(16)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(engine.waiting) + len(engine.running) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        fake_vllm.step_gate = None
    assert engine.max_in_flight == 16
    for prompt, result in zip(prompts, results, strict=True):
        np.testing.assert_array_equal(result.sequences[0].tokens_T, _run(local, prompt, GREEDY).sequences[0].tokens_T)


def test_stop_tokens_and_strings_end_each_sequence_with_the_local_tokens(backends: Any, trained: Any) -> None:
    local, served = _clients(backends, trained[1])
    first = _run(local, PROMPTS[0], SamplingParams(max_tokens=12, temperature=0.0)).sequences[0].tokens_T
    tokenizer = local.get_tokenizer()
    by_token = SamplingParams(max_tokens=12, temperature=0.0, stop_tokens=[int(first[3])])
    by_string = SamplingParams(max_tokens=12, temperature=0.0, stop_strings=[tokenizer.decode(first[2:4])])
    for params in (by_token, by_string):
        futures = [served.sample(ModelInput.from_tokens(prompt), 1, params) for prompt in PROMPTS]
        stopped = 0
        for prompt, future in zip(PROMPTS, futures, strict=True):
            theirs = future.result(timeout=120).sequences[0]
            mine = _run(local, prompt, params).sequences[0]
            np.testing.assert_array_equal(theirs.tokens_T, mine.tokens_T)
            assert theirs.stop_reason == mine.stop_reason
            stopped += theirs.stop_reason == "stop"
        assert stopped >= 1
    assert _run(served, PROMPTS[0], by_token).sequences[0].tokens_T[-1] == first[3]  # the stop token kept


def test_prompt_logprobs_topk_and_compute_logprobs_match_the_local_engine(backends: Any, trained: Any) -> None:
    local, served = _clients(backends, trained[1])
    prompt = PROMPTS[2]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    for include, topk in ((True, 0), (True, 5), (False, 3)):
        mine = _run(local, prompt, params, include_prompt_logprobs=include, topk_prompt_logprobs=topk)
        theirs = _run(served, prompt, params, include_prompt_logprobs=include, topk_prompt_logprobs=topk)
        assert np.isnan(theirs.prompt_logprobs_T[0])
        np.testing.assert_allclose(theirs.prompt_logprobs_T[1:], mine.prompt_logprobs_T[1:], atol=1e-4)
        if topk:
            np.testing.assert_array_equal(theirs.topk_prompt_token_ids_T_K, mine.topk_prompt_token_ids_T_K)
            np.testing.assert_allclose(theirs.topk_prompt_logprobs_T_K, mine.topk_prompt_logprobs_T_K, atol=1e-4)
        else:
            assert theirs.topk_prompt_token_ids_T_K is None
    scored_mine = local.compute_logprobs(ModelInput.from_tokens(prompt)).result()
    scored_theirs = served.compute_logprobs(ModelInput.from_tokens(prompt)).result(timeout=120)
    assert np.isnan(scored_theirs[0])
    np.testing.assert_allclose(scored_theirs[1:], scored_mine[1:], atol=1e-4)


def test_context_overflow_is_the_local_validation_error(backends: Any, trained: Any) -> None:
    local, served = _clients(backends, trained[1])
    params = SamplingParams(max_tokens=100)
    errors = []
    for client in (local, served):
        with pytest.raises(ValidationError) as caught:
            client.sample(ModelInput.from_tokens(list(range(40))), 1, params)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_a_new_or_overwritten_checkpoint_is_a_new_adapter_and_the_same_reuses_its_id(
    backends: Any, trained: Any
) -> None:
    client, first = trained
    _, served_first = _clients(backends, first)
    before = _run(served_first, PROMPTS[1], GREEDY).sequences[0]
    _train(client, 1)
    second = client.save_weights_for_sampler("second").result()
    _, served_second = _clients(backends, second)
    _, again = _clients(backends, second)
    assert served_second.lora_request.lora_int_id != served_first.lora_request.lora_int_id
    assert again.lora_request.lora_int_id == served_second.lora_request.lora_int_id
    after = _run(served_second, PROMPTS[1], GREEDY).sequences[0]
    assert not np.allclose(after.logprobs_T[0], before.logprobs_T[0], atol=1e-4)
    local_second, _ = _clients(backends, second)
    np.testing.assert_array_equal(after.tokens_T, _run(local_second, PROMPTS[1], GREEDY).sequences[0].tokens_T)
    _train(client, 2)
    client.save_weights_for_sampler("second", overwrite=True).result()
    local_over, overwritten = _clients(backends, second)
    assert overwritten.lora_request.lora_int_id not in (
        served_first.lora_request.lora_int_id,
        served_second.lora_request.lora_int_id,
    )
    mine = _run(local_over, PROMPTS[1], GREEDY).sequences[0]
    theirs = _run(overwritten, PROMPTS[1], GREEDY).sequences[0]
    np.testing.assert_array_equal(theirs.tokens_T, mine.tokens_T)
    np.testing.assert_allclose(theirs.logprobs_T, mine.logprobs_T, atol=1e-4)


def test_the_base_model_is_saved_once_as_a_folder_for_vllm(backends: Any) -> None:
    local = backends[0].create_sampling_client(base_model=TINY).result()
    served = backends[1].create_sampling_client(base_model=TINY).result()
    assert isinstance(served, VllmSamplingClient)
    assert served.lora_request is None
    folders = list((backends[1].checkpoint_dir / ".vllm-models").iterdir())
    assert len(folders) == 1
    assert (folders[0] / "config.json").is_file()
    assert (folders[0] / "tokenizer.json").is_file()
    np.testing.assert_array_equal(
        _run(served, PROMPTS[0], GREEDY).sequences[0].tokens_T, _run(local, PROMPTS[0], GREEDY).sequences[0].tokens_T
    )


def test_full_weights_are_refused_with_the_export_fix(backends: Any) -> None:
    full = backends[0].create_full_training_client(TINY, seed=0).result()
    path = full.save_weights_for_sampler("full").result()
    with pytest.raises(ConfigError, match="tinkerflow export") as caught:
        backends[1].create_sampling_client(model_path=path).result()
    assert caught.value.field == "model_path"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sampling_engine": "sglang"}, "sampling_engine"),
        ({"sampling_engine": "vllm", "vllm_options": ["gpu_memory_utilization"]}, "vllm_options"),
        ({"sampling_engine": "vllm", "vllm_options": {"gpu_memory_utilization": [0.5]}}, "vllm_options"),
        ({"sampling_engine": "vllm", "vllm_options": {"model": "other"}}, "vllm_options['model']"),
        ({"sampling_engine": "vllm", "vllm_options": {"max_lora_rank": 24}}, "vllm_options['max_lora_rank']"),
        ({"vllm_options": {"max_loras": 2}}, "vllm_options"),
    ],
)
def test_bad_engine_settings_are_config_errors(fake_vllm: Any, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalBackend(device="cpu", **kwargs)
    assert caught.value.field.startswith(field)


def test_an_unknown_engine_argument_is_named_when_the_engine_is_made(fake_vllm: Any, tmp_path: pathlib.Path) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path, device="cpu", sampling_engine="vllm", vllm_options={"nonsense": 1})
    with backend, pytest.raises(ConfigError) as caught:
        backend.create_sampling_client(base_model=TINY).result()
    assert caught.value.field == "vllm_options['nonsense']"


def test_vllm_missing_fails_when_the_backend_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_engine.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ConfigError, match=r"tinkerflow\[vllm\]") as caught:
        LocalBackend(device="cpu", sampling_engine="vllm")
    assert caught.value.field == "sampling_engine"


def test_close_stops_the_loop_thread_and_shuts_the_engine_down(fake_vllm: Any, tmp_path: pathlib.Path) -> None:
    backend = LocalBackend(checkpoint_dir=tmp_path, device="cpu", dtype=torch.float32, sampling_engine="vllm")
    client = backend.create_sampling_client(base_model=TINY).result()
    assert isinstance(client, VllmSamplingClient)
    _run(client, PROMPTS[0], GREEDY)
    engine = fake_vllm.instances[-1]
    thread = client._engine.thread
    assert thread.is_alive()
    started = time.monotonic()
    backend.close()
    assert not thread.is_alive()
    assert engine.shutdown_called
    assert time.monotonic() - started < 30
    with pytest.raises(ValidationError):
        client.sample(ModelInput.from_tokens(PROMPTS[0]), 1, GREEDY)


class _Logprob:
    def __init__(self, logprob: float, rank: int) -> None:
        self.logprob, self.rank = logprob, rank


def test_prompt_scores_take_the_top_k_by_rank_and_pad_position_zero() -> None:
    entries = [None, {9: _Logprob(-5.0, 7), 3: _Logprob(-0.1, 1), 4: _Logprob(-2.0, 2)}, {4: _Logprob(-0.5, 1)}]
    scores, ids, values = prompt_scores([1, 9, 4], entries, 1)
    np.testing.assert_allclose(scores[1:], [-5.0, -0.5])
    assert ids is not None
    assert values is not None
    assert ids.tolist() == [[0], [3], [4]]
    assert values[0, 0] == -99999.0


def test_an_aborted_sequence_is_an_error() -> None:
    completion = SimpleNamespace(token_ids=[5], logprobs=[{5: _Logprob(-1.0, 1)}], finish_reason="abort")
    output = SimpleNamespace(prompt_logprobs=None, outputs=[completion], finished=True)
    with pytest.raises(VllmRequestError, match="abort"):
        to_response([output], [1], first_id=0, scored=False, topk=0)
