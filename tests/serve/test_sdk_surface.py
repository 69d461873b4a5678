"""The unmodified ``tinker`` SDK against ``tinkerflow serve``, call by call, differentially against the in-process
``LocalBackend``: the same seed and data give the same losses, per-datum logprobs, optimizer metrics, saved weights
and optimizer state, sampled tokens and logprobs (to fp32 tolerance); the REST surface (training runs, checkpoints,
sessions, samplers, signed downloads) answers what the store holds; futures submitted back to back apply in order.

One server (the ``server`` fixture of ``conftest.py``) serves the whole module; each test makes its own runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import pathlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
tinker = pytest.importorskip("tinker")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import tinker.types as tt  # noqa: E402  (after the importorskips)

from tinkerflow import interop  # noqa: E402
from tinkerflow.shell.backends.local import LocalBackend, LocalSamplingClient, LocalTrainingClient  # noqa: E402
from tinkerflow.shell.backends.local.checkpoint import LocalPath  # noqa: E402
from tinkerflow.shell.serve import rest as rest_module  # noqa: E402
from tinkerflow.shell.serve.paths import parse_tinker_path  # noqa: E402
from tinkerflow.training import AdamParams, ForwardBackwardOutput  # noqa: E402

if TYPE_CHECKING:
    from tinkerflow.datum import Datum
    from tinkerflow.shell.serve.server import ServerThread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY: Final = "tiny-llama:hidden=32,layers=2,heads=4,kv_heads=2,intermediate=64,vocab=300,context=64"
VOCAB: Final = 300
RTOL: Final = 1e-5
ATOL: Final = 1e-6
#: Every AdamParams field away from its default, each large enough to change the weights after a few steps.
ADAM: Final = tt.AdamParams(learning_rate=2e-2, beta1=0.5, beta2=0.8, eps=1e-3, weight_decay=0.3, grad_clip_norm=0.5)
#: The config of each loss: clip thresholds and beta far from the defaults, so a dropped config shows.
LOSS_CONFIGS: Final[Mapping[str, dict[str, float] | None]] = {
    "cross_entropy": None,
    "importance_sampling": None,
    "ppo": {"clip_low_threshold": 0.5, "clip_high_threshold": 1.05},
    "cispo": {"clip_low_threshold": 0.5, "clip_high_threshold": 1.05},
    "dro": {"beta": 2.5},
    "gspo": {"clip_low_threshold": 0.5, "clip_high_threshold": 1.05},
}
#: A different config of each configurable loss (to show the config reaches the loss).
OTHER_CONFIGS: Final[Mapping[str, dict[str, float]]] = {
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "gspo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": 0.1},
}


# --- fixtures and helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """The reference: the local backend in this process, on the CPU in fp32 as the server's."""
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("local-ckpt"), device="cpu") as backend:
        yield backend


@pytest.fixture(scope="module")
def rest(server: ServerThread) -> Any:
    """The SDK's ``RestClient`` on the server."""
    return tinker.RestClient(base_url=server.base_url, api_key=server.config.api_key)


@dataclasses.dataclass
class Pair:
    """A training run on the server and its twin in the local backend (same base model, LoRA settings, seed)."""

    remote: Any  # tinker.TrainingClient
    mine: LocalTrainingClient


@pytest.fixture
def make_pair(service_client: Any, local: LocalBackend) -> Iterator[Callable[..., Pair]]:
    """``make_pair(seed=0, rank=4, **lora flags)``: twin runs; the local ones are closed after the test."""
    made: list[LocalTrainingClient] = []

    def make(seed: int = 0, rank: int = 4, **flags: bool) -> Pair:
        remote = service_client.create_lora_training_client(TINY, rank=rank, seed=seed, **flags).result()
        mine = local.create_lora_training_client(TINY, rank=rank, seed=seed, **flags).result()  # type: ignore[arg-type]
        made.append(mine)
        return Pair(remote, mine)

    yield make
    for client in made:
        client.close()


def tinker_data(loss: str, seed: int, lengths: Sequence[int] = (5, 9, 3)) -> list[tt.Datum]:
    """Random data with the loss inputs ``loss`` needs (``LOSS_INPUTS``), as the SDK's datums. Sampling logprobs
    are near the tiny model's (about -log 300), so importance ratios land both inside and outside the clip range."""
    rng = np.random.default_rng(seed)
    data = []
    for length in lengths:
        tokens = rng.integers(0, VOCAB, length + 1)
        inputs: dict[str, np.ndarray] = {"target_tokens": tokens[1:].astype(np.int64)}
        if loss == "cross_entropy":
            inputs["weights"] = (rng.random(length) < 0.8).astype(np.float32)
        else:
            inputs["logprobs"] = rng.uniform(-7.0, -4.5, length).astype(np.float32)
            inputs["advantages"] = rng.normal(size=length).astype(np.float32)
            if loss == "gspo":
                inputs["sequence_ratio_mask"] = np.ones(length, dtype=np.float32)
        data.append(
            tt.Datum(
                model_input=tt.ModelInput.from_ints(tokens[:-1].tolist()),
                loss_fn_inputs={key: tt.TensorData.from_numpy(value) for key, value in inputs.items()},
            )
        )
    return data


def local_data(data: Sequence[tt.Datum]) -> list[Datum]:
    return [interop.datum_from_tinker(datum) for datum in data]


def assert_outputs_equal(remote: tt.ForwardBackwardOutput, mine: ForwardBackwardOutput) -> None:
    """Same metrics (keys and values) and the same per-datum logprobs and elementwise losses."""
    converted = interop.forward_backward_output_from_tinker(remote)
    assert sorted(converted.metrics) == sorted(mine.metrics)
    for key, value in mine.metrics.items():
        np.testing.assert_allclose(converted.metrics[key], value, rtol=RTOL, atol=ATOL, err_msg=key)
    assert len(converted.loss_fn_outputs) == len(mine.loss_fn_outputs)
    for got, want in zip(converted.loss_fn_outputs, mine.loss_fn_outputs, strict=True):
        np.testing.assert_allclose(got.logprobs_T, want.logprobs_T, rtol=RTOL, atol=ATOL)
        assert (got.elementwise_loss_T is None) == (want.elementwise_loss_T is None)
        if want.elementwise_loss_T is not None:
            np.testing.assert_allclose(got.elementwise_loss_T, want.elementwise_loss_T, rtol=RTOL, atol=ATOL)


def remote_dir(server: ServerThread, tinker_path: str) -> pathlib.Path:
    """The folder of a ``tinker://`` checkpoint in the server's store."""
    return parse_tinker_path(tinker_path).directory(server.config.store / "checkpoints")


def local_dir(local: LocalBackend, local_path: str) -> pathlib.Path:
    return LocalPath.parse(local_path).directory(local.checkpoint_dir)


def tensors(folder: pathlib.Path, file: str = "adapter_model.safetensors") -> dict[str, np.ndarray]:
    loaded: dict[str, np.ndarray] = safetensors_numpy.load_file(str(folder / file))
    return loaded


def assert_tensors_equal(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


def tensors_differ(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> bool:
    return sorted(got) != sorted(want) or any(
        not np.allclose(got[key], want[key], rtol=RTOL, atol=ATOL) for key in want
    )


def local_adam(params: tt.AdamParams) -> AdamParams:
    return interop.adam_params_from_tinker(params)


def train_both(pair: Pair, loss: str, steps: int, seed: int = 0, config: dict[str, float] | None = None) -> None:
    """``steps`` forward_backward + optim_step on both runs, each step's outputs and metrics compared."""
    for step in range(steps):
        data = tinker_data(loss, seed + step)
        got = pair.remote.forward_backward(data, loss, config).result()
        want = pair.mine.forward_backward(local_data(data), loss, config).result()  # type: ignore[arg-type]
        assert_outputs_equal(got, want)
        got_step = pair.remote.optim_step(ADAM).result()
        want_step = pair.mine.optim_step(local_adam(ADAM)).result()
        assert sorted(got_step.metrics or {}) == sorted(want_step)
        for key, value in want_step.items():
            np.testing.assert_allclose((got_step.metrics or {})[key], value, rtol=RTOL, atol=ATOL)


def save_both(server: ServerThread, local: LocalBackend, pair: Pair, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """``save_state(name)`` on both runs; the two checkpoint folders."""
    path = pair.remote.save_state(name).result().path
    assert path == f"tinker://{pair.remote.model_id}/weights/{name}"
    return remote_dir(server, path), local_dir(local, pair.mine.save_state(name).result())


def session_of(model_id: str) -> str:
    """The session of a training run id (``<session>:train:<n>``)."""
    session, _, number = model_id.rpartition(":train:")
    assert session, model_id
    assert number.isdigit(), model_id
    return session


# --- training clients -----------------------------------------------------------------------------------------------

LORA_FLAGS: Final = (
    {"train_mlp": True, "train_attn": True, "train_unembed": True},
    {"train_mlp": True, "train_attn": False, "train_unembed": False},
    {"train_mlp": False, "train_attn": True, "train_unembed": False},
    {"train_mlp": False, "train_attn": False, "train_unembed": True},
)


def test_create_lora_training_client_rank_seed_and_trained_modules(
    server: ServerThread, local: LocalBackend, rest: Any, make_pair: Callable[..., Pair]
) -> None:
    """get_info reports the LoRA settings; the train_* flags decide which adapters exist (the same as the local
    backend's, initialised alike from the seed), and weights_info reads them back."""
    key_sets = []
    first = ""
    for index, flags in enumerate(LORA_FLAGS):
        pair = make_pair(seed=7, rank=2 + index, **flags)
        info = pair.remote.get_info()
        assert (info.is_lora, info.lora_rank, info.model_name) == (True, 2 + index, TINY)
        assert info.model_id == pair.remote.model_id
        remote, mine = save_both(server, local, pair, "flags")
        got = tensors(remote)
        assert_tensors_equal(got, tensors(mine))
        key_sets.append(frozenset(got))
        first = first or str(remote)
        weights_info = rest.get_weights_info_by_tinker_path(f"tinker://{info.model_id}/weights/flags").result()
        assert weights_info.base_model == TINY
        assert (weights_info.is_lora, weights_info.lora_rank) == (True, 2 + index)
        assert (weights_info.train_mlp, weights_info.train_attn, weights_info.train_unembed) == (
            flags["train_mlp"],
            flags["train_attn"],
            flags["train_unembed"],
        )
    assert len(set(key_sets)) == len(LORA_FLAGS)
    assert key_sets[0] == key_sets[1] | key_sets[2] | key_sets[3]
    # the seed reaches the initialisation: another seed, other LoRA A matrices
    other = make_pair(seed=8, rank=2, **LORA_FLAGS[0])
    assert tensors_differ(tensors(save_both(server, local, other, "flags")[0]), tensors(pathlib.Path(first)))


@pytest.mark.parametrize("loss", list(LOSS_CONFIGS))
def test_builtin_losses_forward_backward_and_optim_step_match_local(
    loss: str, server: ServerThread, local: LocalBackend, make_pair: Callable[..., Pair]
) -> None:
    """forward, then forward_backward + optim_step (every Adam field set) twice: the same losses, logprobs and
    optimizer metrics as the local backend, and then the same saved weights and Adam moments."""
    config = LOSS_CONFIGS[loss]
    pair = make_pair(seed=3)
    data = tinker_data(loss, 100)
    got = pair.remote.forward(data, loss, config).result()
    want = pair.mine.forward(local_data(data), loss, config).result()  # type: ignore[arg-type]
    assert_outputs_equal(got, want)
    assert np.isfinite(got.metrics["loss:sum"])
    if loss in OTHER_CONFIGS:  # the config matters: a server that dropped it would not match
        other = pair.mine.forward(local_data(data), loss, OTHER_CONFIGS[loss]).result()  # type: ignore[arg-type]
        assert not np.isclose(other.metrics["loss:sum"], got.metrics["loss:sum"], rtol=1e-3)
    train_both(pair, loss, steps=2, config=config)
    remote, mine = save_both(server, local, pair, "after")
    assert_tensors_equal(tensors(remote), tensors(mine))
    assert_tensors_equal(tensors(remote, "optimizer.safetensors"), tensors(mine, "optimizer.safetensors"))
    # and the model moved: a forward pass now differs from the first one
    again = pair.remote.forward(data, loss, config).result()
    assert not np.isclose(again.metrics["loss:sum"], got.metrics["loss:sum"], rtol=1e-4)


def test_stable_reinforce_is_a_clear_client_error(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair()
    with pytest.raises(tinker.APIStatusError, match="stable_reinforce") as caught:
        pair.remote.forward_backward(tinker_data("importance_sampling", 2), "stable_reinforce").result()
    assert 400 <= caught.value.status_code < 500
    # the losses it offers instead are the ones the local backend runs (gspo is one of them)
    assert "cross_entropy" in str(caught.value)
    assert "gspo" in str(caught.value)


def _custom_loss(data: Sequence[object], logprobs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """A nonlinear loss of the logprobs only (so it runs on the SDK's and tinkerflow's datums alike)."""
    total = sum(((index + 1) * (0.05 * lp.square() + lp)).sum() for index, lp in enumerate(logprobs))
    loss = torch.as_tensor(total)
    return loss, {"tokens:sum": float(sum(lp.numel() for lp in logprobs))}


def test_forward_backward_custom_matches_local(
    server: ServerThread, local: LocalBackend, make_pair: Callable[..., Pair]
) -> None:
    """The SDK runs the custom loss client-side (a forward, then a linearised cross_entropy backward); the update
    equals the local backend's forward_backward_custom with the same loss."""
    pair = make_pair(seed=5)
    for step in range(2):
        data = tinker_data("cross_entropy", 200 + step)
        got = pair.remote.forward_backward_custom(data, _custom_loss).result()
        want = pair.mine.forward_backward_custom(local_data(data), _custom_loss).result()
        for key in ("loss:sum", "surrogate_loss:sum", "tokens:sum"):
            np.testing.assert_allclose(got.metrics[key], want.metrics[key], rtol=RTOL, atol=1e-4, err_msg=key)
        converted = interop.forward_backward_output_from_tinker(got)
        for got_out, want_out in zip(converted.loss_fn_outputs, want.loss_fn_outputs, strict=True):
            np.testing.assert_allclose(got_out.logprobs_T, want_out.logprobs_T, rtol=RTOL, atol=ATOL)
        pair.remote.optim_step(ADAM).result()
        pair.mine.optim_step(local_adam(ADAM)).result()
    remote, mine = save_both(server, local, pair, "custom")
    assert_tensors_equal(tensors(remote), tensors(mine))


def test_optim_step_sends_every_adam_field(
    server: ServerThread, local: LocalBackend, make_pair: Callable[..., Pair]
) -> None:
    """The server's weights after three steps equal the local run's with ADAM, and differ from a local run with
    any one field back at its default: so each field reached the optimizer."""
    pair = make_pair(seed=11)
    train_both(pair, "cross_entropy", steps=3, seed=300)
    remote, _ = save_both(server, local, pair, "adam")
    got = tensors(remote)
    defaults = tt.AdamParams()
    for field in ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm"):
        changed = ADAM.model_copy(update={field: getattr(defaults, field)})
        twin = local.create_lora_training_client(TINY, rank=4, seed=11).result()
        try:
            for step in range(3):
                twin.forward_backward(local_data(tinker_data("cross_entropy", 300 + step)), "cross_entropy").result()
                twin.optim_step(local_adam(changed)).result()
            assert tensors_differ(got, tensors(local_dir(local, twin.save_state("adam").result()))), field
        finally:
            twin.close()


def test_resume_from_state_with_and_without_optimizer(
    server: ServerThread, local: LocalBackend, service_client: Any, rest: Any, make_pair: Callable[..., Pair]
) -> None:
    """create_training_client_from_state loads the weights only: its next step differs from the continued run's
    (and equals the local backend's resume without optimizer); ..._with_optimizer continues exactly."""
    pair = make_pair(seed=13)
    train_both(pair, "cross_entropy", steps=2, seed=400)
    mid = pair.remote.save_state("mid").result().path
    local_mid = pair.mine.save_state("mid").result()
    train_both(pair, "cross_entropy", steps=1, seed=402)
    continued = tensors(save_both(server, local, pair, "continued")[0])
    continued_adam = tensors(
        remote_dir(server, f"tinker://{pair.remote.model_id}/weights/continued"), "optimizer.safetensors"
    )

    results = {}
    for with_optimizer in (False, True):
        if with_optimizer:
            resumed = service_client.create_training_client_from_state_with_optimizer(mid).result()
        else:
            resumed = service_client.create_training_client_from_state(mid).result()
        info = resumed.get_info()
        assert (info.is_lora, info.lora_rank, info.model_name) == (True, 4, TINY)
        assert resumed.model_id != pair.remote.model_id
        twin = local.create_training_client_from_state(local_mid, with_optimizer=with_optimizer).result()
        try:
            twin_pair = Pair(resumed, twin)
            train_both(twin_pair, "cross_entropy", steps=1, seed=402)
            name = f"resumed-{with_optimizer}"
            remote, mine = save_both(server, local, twin_pair, name)
            assert_tensors_equal(tensors(remote), tensors(mine))
            results[with_optimizer] = (tensors(remote), tensors(remote, "optimizer.safetensors"))
        finally:
            twin.close()
    assert tensors_differ(results[False][0], continued)
    assert_tensors_equal(results[True][0], continued)
    assert_tensors_equal(results[True][1], continued_adam)
    run = rest.get_training_run_by_tinker_path(mid).result()
    assert run.training_run_id == pair.remote.model_id


# --- sampling -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_samplers(service_client: Any, local: LocalBackend) -> Iterator[tuple[Any, LocalSamplingClient]]:
    """A server sampling client and a local one on the base model."""
    remote = service_client.create_sampling_client(base_model=TINY).result()
    mine = local.create_sampling_client(base_model=TINY).result()
    yield remote, mine
    mine.close()


def assert_samples_equal(got: tt.SampleResponse, want: Any) -> None:
    converted = interop.sample_response_from_tinker(got)
    assert len(converted.sequences) == len(want.sequences)
    for got_seq, want_seq in zip(converted.sequences, want.sequences, strict=True):
        assert got_seq.tokens_T.tolist() == want_seq.tokens_T.tolist()
        assert got_seq.stop_reason == want_seq.stop_reason
        np.testing.assert_allclose(got_seq.logprobs_T, want_seq.logprobs_T, rtol=RTOL, atol=ATOL)
    for name in ("prompt_logprobs_T", "topk_prompt_token_ids_T_K", "topk_prompt_logprobs_T_K"):
        got_value, want_value = getattr(converted, name), getattr(want, name)
        assert (got_value is None) == (want_value is None), name
        if want_value is not None:
            np.testing.assert_allclose(got_value, want_value, rtol=RTOL, atol=ATOL, err_msg=name)


def sample_both(
    samplers: tuple[Any, Any], prompt: Sequence[int], num_samples: int, params: tt.SamplingParams, **options: Any
) -> tuple[tt.SampleResponse, Any]:
    remote, mine = samplers
    got = remote.sample(tt.ModelInput.from_ints(list(prompt)), num_samples, params, **options).result()
    local_options = {"include_prompt_logprobs": options.get("include_prompt_logprobs", False)}
    local_options["topk_prompt_logprobs"] = options.get("topk_prompt_logprobs", 0)
    want = mine.sample(
        interop.model_input_from_tinker(tt.ModelInput.from_ints(list(prompt))),
        num_samples,
        interop.sampling_params_from_tinker(params),
        **local_options,
    ).result()
    return got, want


PROMPTS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8)


@settings(max_examples=15)
@given(
    prompt=PROMPTS,
    num_samples=st.integers(1, 3),
    max_tokens=st.integers(1, 8),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.sampled_from([-1, 1, 5, 40]),
    top_p=st.sampled_from([1.0, 0.95, 0.3]),
    seed=st.integers(0, 2**62),
    stop=st.one_of(
        st.none(),
        st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40),
        st.lists(st.text(alphabet="abcdefghij ;'", min_size=1, max_size=2), min_size=1, max_size=3),
    ),
)
def test_sample_equals_local_sampler_with_the_same_seed(
    base_samplers: tuple[Any, LocalSamplingClient],
    prompt: list[int],
    num_samples: int,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    stop: list[int] | list[str] | None,
) -> None:
    """Any sampling parameters and seed: the same tokens, stop reasons and logprobs as the local sampler."""
    params = tt.SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop
    )
    got, want = sample_both(base_samplers, prompt, num_samples, params)
    assert_samples_equal(got, want)
    ids = [sequence.sequence_id for sequence in got.sequences]
    assert all(ids)
    assert len(set(ids)) == num_samples


def test_sample_seeds_stops_and_prompt_logprobs(base_samplers: tuple[Any, LocalSamplingClient]) -> None:
    remote, _ = base_samplers
    prompt = [72, 101, 108, 108, 111]
    free = tt.SamplingParams(max_tokens=16, temperature=1.0, seed=123)
    first, want = sample_both(base_samplers, prompt, 3, free)
    assert_samples_equal(first, want)
    again = remote.sample(tt.ModelInput.from_ints(prompt), 3, free).result()
    assert [s.tokens for s in again.sequences] == [s.tokens for s in first.sequences]  # same seed, same tokens
    other = remote.sample(tt.ModelInput.from_ints(prompt), 3, free.model_copy(update={"seed": 124})).result()
    assert [s.tokens for s in other.sequences] != [s.tokens for s in first.sequences]
    assert len({tuple(s.tokens) for s in first.sequences}) > 1  # the samples of one request differ
    ids = [s.sequence_id for response in (first, again, other) for s in response.sequences]
    assert all(ids)
    assert len(set(ids)) == len(ids)

    # greedy (temperature 0) is the local greedy, whatever the seed
    greedy_params = tt.SamplingParams(max_tokens=24, temperature=0.0)
    greedy, want = sample_both(base_samplers, prompt, 2, greedy_params)
    assert_samples_equal(greedy, want)
    tokens = greedy.sequences[0].tokens
    assert greedy.sequences[1].tokens == tokens
    assert greedy.sequences[0].stop_reason == "length"

    # a stop token id: the sequence ends with its first occurrence, stop reason "stop"
    stop_token = tokens[5]
    stopped, want = sample_both(base_samplers, prompt, 1, greedy_params.model_copy(update={"stop": [stop_token]}))
    assert_samples_equal(stopped, want)
    end = tokens.index(stop_token) + 1
    assert (stopped.sequences[0].tokens, stopped.sequences[0].stop_reason) == (tokens[:end], "stop")

    # a stop string: a character the greedy text holds
    position = next(i for i, token in enumerate(tokens) if 33 <= token < 127)  # printable ASCII
    text = chr(tokens[position])
    stopped, want = sample_both(base_samplers, prompt, 1, greedy_params.model_copy(update={"stop": [text]}))
    assert_samples_equal(stopped, want)
    sequence = stopped.sequences[0]
    assert sequence.stop_reason == "stop"
    assert len(sequence.tokens) <= position + 1
    assert sequence.tokens == tokens[: len(sequence.tokens)]
    assert text in bytes(token for token in sequence.tokens if token < 256).decode("utf-8", "replace")

    # prompt logprobs and their top-k: NaN/None at position 0, then the local sampler's values
    scored, want = sample_both(
        base_samplers, prompt, 1, greedy_params, include_prompt_logprobs=True, topk_prompt_logprobs=4
    )
    assert_samples_equal(scored, want)
    assert scored.prompt_logprobs is not None
    assert scored.prompt_logprobs[0] is None
    assert all(value is not None for value in scored.prompt_logprobs[1:])
    assert scored.topk_prompt_logprobs is not None
    assert len(scored.topk_prompt_logprobs) == len(prompt)
    assert scored.topk_prompt_logprobs[0] is None
    assert all(row is not None and len(row) == 4 for row in scored.topk_prompt_logprobs[1:])


def test_compute_logprobs_equals_local(base_samplers: tuple[Any, LocalSamplingClient]) -> None:
    remote, mine = base_samplers
    prompt = [5, 17, 250, 3, 99, 42]
    got = remote.compute_logprobs(tt.ModelInput.from_ints(prompt)).result()
    want = mine.compute_logprobs(interop.model_input_from_tinker(tt.ModelInput.from_ints(prompt))).result()
    assert len(got) == len(prompt)
    assert got[0] is None
    np.testing.assert_allclose(np.array(got[1:], dtype=np.float32), np.asarray(want)[1:], rtol=RTOL, atol=ATOL)


def test_sampling_clients_of_trained_weights_match_local(
    server: ServerThread, local: LocalBackend, service_client: Any, rest: Any, make_pair: Callable[..., Pair]
) -> None:
    """save_weights_for_sampler + create_sampling_client(model_path) and save_weights_and_get_sampling_client sample
    what the local backend's samplers of the same weights sample."""
    pair = make_pair(seed=17)
    train_both(pair, "cross_entropy", steps=2, seed=500)
    saved = pair.remote.save_weights_for_sampler("for-sampling").result()
    assert saved.path == f"tinker://{pair.remote.model_id}/sampler_weights/for-sampling"
    local_path = pair.mine.save_weights_for_sampler("for-sampling").result()
    remote_folder, local_folder = remote_dir(server, saved.path), local_dir(local, local_path)
    assert_tensors_equal(tensors(remote_folder), tensors(local_folder))
    assert not (remote_folder / "optimizer.safetensors").exists()

    prompt = [10, 20, 30, 40]
    params = tt.SamplingParams(max_tokens=12, temperature=0.0)
    from_path = service_client.create_sampling_client(model_path=saved.path).result()
    mine_from_path = local.create_sampling_client(model_path=local_path).result()
    snapshot = pair.remote.save_weights_and_get_sampling_client().result()
    mine_snapshot = pair.mine.save_weights_and_get_sampling_client().result()
    base = local.create_sampling_client(base_model=TINY).result()
    try:
        got, want = sample_both((from_path, mine_from_path), prompt, 1, params, include_prompt_logprobs=True)
        assert_samples_equal(got, want)
        got_snapshot, want_snapshot = sample_both((snapshot, mine_snapshot), prompt, 1, params)
        assert_samples_equal(got_snapshot, want_snapshot)
        assert got_snapshot.sequences[0].tokens == got.sequences[0].tokens  # the same weights
        # the trained weights are not the base model's
        _, base_sample = sample_both((from_path, base), prompt, 1, params, include_prompt_logprobs=True)
        assert not np.allclose(
            np.asarray(got.prompt_logprobs[1:], dtype=np.float32), base_sample.prompt_logprobs_T[1:], rtol=1e-4
        )
        logprobs = snapshot.compute_logprobs(tt.ModelInput.from_ints(prompt)).result()
        np.testing.assert_allclose(np.array(logprobs[1:]), np.array(got.prompt_logprobs[1:]), rtol=RTOL, atol=ATOL)
    finally:
        for client in (mine_from_path, mine_snapshot, base):
            client.close()
    # the samplers are records of the session: base model and path read back
    session = rest.get_session(session_of(pair.remote.model_id)).result()
    assert pair.remote.model_id in session.training_run_ids
    by_path = [rest.get_sampler(sampler_id).result() for sampler_id in session.sampler_ids]
    assert any(s.model_path == saved.path and s.base_model == TINY for s in by_path)
    assert all(s.base_model == TINY for s in by_path)


# --- the REST client ------------------------------------------------------------------------------------------------


def test_rest_training_runs_and_sessions(rest: Any, make_pair: Callable[..., Pair], service_client: Any) -> None:
    pair = make_pair(seed=19, rank=3)
    state = pair.remote.save_state("runs").result().path
    sampler_path = pair.remote.save_weights_for_sampler("runs-s").result().path
    model_id = pair.remote.model_id

    run = rest.get_training_run(model_id).result()
    assert (run.training_run_id, run.base_model, run.is_lora, run.lora_rank) == (model_id, TINY, True, 3)
    assert run.last_checkpoint is not None
    assert run.last_checkpoint.tinker_path == state
    assert run.last_sampler_checkpoint is not None
    assert run.last_sampler_checkpoint.tinker_path == sampler_path
    assert run.last_request_time.tzinfo is not None
    assert rest.get_training_run_by_tinker_path(state).result().training_run_id == model_id
    assert rest.get_training_run_by_tinker_path(sampler_path).result().training_run_id == model_id
    with pytest.raises(tinker.NotFoundError):
        rest.get_training_run(f"{session_of(model_id)}:train:999").result()

    everything = rest.list_training_runs(limit=1000).result()
    total = everything.cursor.total_count
    assert total == len(everything.training_runs) >= 1
    assert model_id in [r.training_run_id for r in everything.training_runs]
    paged = []
    for offset in range(0, total, 2):
        page = rest.list_training_runs(limit=2, offset=offset).result()
        assert (page.cursor.offset, page.cursor.limit, page.cursor.total_count) == (offset, 2, total)
        assert len(page.training_runs) == min(2, total - offset)
        paged.extend(r.training_run_id for r in page.training_runs)
    assert paged == [r.training_run_id for r in everything.training_runs]

    session_id = session_of(model_id)
    session = rest.get_session(session_id).result()
    assert model_id in session.training_run_ids
    assert all(session_of(run_id) == session_id for run_id in session.training_run_ids)
    assert session_id in rest.list_sessions(limit=100).result().sessions
    with pytest.raises(tinker.NotFoundError):
        rest.get_session("session-does-not-exist").result()


def test_rest_checkpoints_list_publish_ttl_delete(
    server: ServerThread, rest: Any, make_pair: Callable[..., Pair]
) -> None:
    pair = make_pair(seed=23)
    model_id = pair.remote.model_id
    paths = [pair.remote.save_state(f"c{index}").result().path for index in range(3)]
    paths.append(pair.remote.save_weights_for_sampler("c-sampler").result().path)

    listed = rest.list_checkpoints(model_id).result().checkpoints
    by_path = {c.tinker_path: c for c in listed}
    assert sorted(by_path) == sorted(paths)
    for path in paths[:3]:
        name = path.rsplit("/", 1)[1]
        assert (by_path[path].checkpoint_type, by_path[path].checkpoint_id) == ("training", f"weights/{name}")
        files = [f for f in remote_dir(server, path).rglob("*") if f.is_file()]
        assert by_path[path].size_bytes == sum(f.stat().st_size for f in files)
    assert by_path[paths[3]].checkpoint_type == "sampler"
    assert not any(c.public for c in listed)

    # every checkpoint of the server, newest first, in pages whose union is the whole list
    whole = rest.list_user_checkpoints(limit=1000).result()
    total = whole.cursor.total_count
    assert total == len(whole.checkpoints) >= 4
    assert set(paths) <= {c.tinker_path for c in whole.checkpoints}
    times = [c.time for c in whole.checkpoints]
    assert times == sorted(times, reverse=True)
    pages = []
    for offset in range(0, total, 3):
        page = rest.list_user_checkpoints(limit=3, offset=offset).result()
        assert page.cursor is not None
        assert page.cursor.total_count == total
        pages.extend(c.tinker_path for c in page.checkpoints)
    assert pages == [c.tinker_path for c in whole.checkpoints]

    def checkpoint(path: str) -> tt.Checkpoint:
        return {c.tinker_path: c for c in rest.list_checkpoints(model_id).result().checkpoints}[path]

    rest.publish_checkpoint_from_tinker_path(paths[0]).result()
    assert checkpoint(paths[0]).public
    assert not checkpoint(paths[1]).public
    rest.unpublish_checkpoint_from_tinker_path(paths[0]).result()
    assert not checkpoint(paths[0]).public

    before = datetime.datetime.now(datetime.UTC)
    rest.set_checkpoint_ttl_from_tinker_path(paths[1], 7200).result()
    expires = checkpoint(paths[1]).expires_at
    assert expires is not None
    assert expires.tzinfo is not None
    assert abs((expires - checkpoint(paths[1]).time).total_seconds() - 7200) < 1
    assert expires > before
    rest.set_checkpoint_ttl_from_tinker_path(paths[1], None).result()
    assert checkpoint(paths[1]).expires_at is None

    folder = remote_dir(server, paths[2])
    assert folder.is_dir()
    rest.delete_checkpoint_from_tinker_path(paths[2]).result()
    assert not folder.exists()
    assert paths[2] not in {c.tinker_path for c in rest.list_checkpoints(model_id).result().checkpoints}
    after = rest.list_user_checkpoints(limit=1000).result()
    assert paths[2] not in {c.tinker_path for c in after.checkpoints}
    assert after.cursor.total_count == total - 1
    with pytest.raises(tinker.NotFoundError):
        rest.delete_checkpoint_from_tinker_path(paths[2]).result()
    with pytest.raises(tinker.NotFoundError):
        rest.publish_checkpoint_from_tinker_path(paths[2]).result()
    assert remote_dir(server, paths[0]).is_dir()  # the others stay


def test_external_weights_download_with_signed_urls(
    server: ServerThread, rest: Any, make_pair: Callable[..., Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = make_pair(seed=29)
    train_both(pair, "cross_entropy", steps=1, seed=600)
    saved = pair.remote.save_weights_external("export").result()
    assert saved.path == f"tinker://{pair.remote.model_id}/external_weights/export"
    folder = remote_dir(server, saved.path)
    files = {f.relative_to(folder).as_posix(): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
    assert "adapter_model.safetensors" in files
    assert "adapter_config.json" in files

    answer = rest.get_external_weights_urls(saved.path).result()
    assert sorted(answer.urls) == sorted(files)
    assert answer.expires.tzinfo is not None
    assert answer.expires > datetime.datetime.now(datetime.UTC)
    for relative, url in answer.urls.items():
        assert url.startswith(server.base_url)
        with urllib.request.urlopen(url, timeout=30) as response:  # no key: the signature is the permission
            assert response.read() == files[relative]

    url = answer.urls["adapter_model.safetensors"]
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    tampered_sig = {**query, "sig": ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]}
    other_file = parts.path.replace("adapter_model.safetensors", "checkpoint.json")
    refused = [
        parts._replace(query=urllib.parse.urlencode(tampered_sig)).geturl(),
        parts._replace(query=urllib.parse.urlencode({**query, "expires": "1"})).geturl(),
        parts._replace(query=urllib.parse.urlencode({**query, "expires": str(int(query["expires"]) + 60)})).geturl(),
        parts._replace(path=other_file).geturl(),  # a signature is for one file only
        parts._replace(query="").geturl(),
    ]
    for bad in refused:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=30)
        assert caught.value.code == 403, bad

    # a correctly signed URL past its expiry is refused too
    monkeypatch.setattr(rest_module, "URL_LIFETIME_SECONDS", -60)
    expired = rest.get_external_weights_urls(saved.path).result()
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(expired.urls["adapter_model.safetensors"], timeout=30)
    assert caught.value.code == 403

    # an external checkpoint is a checkpoint: listed, and deleted like the others
    listed = {c.tinker_path: c for c in rest.list_checkpoints(pair.remote.model_id).result().checkpoints}
    assert listed[saved.path].checkpoint_type == "external"
    rest.delete_checkpoint_from_tinker_path(saved.path).result()
    assert not folder.exists()


# --- futures --------------------------------------------------------------------------------------------------------


def test_requests_submitted_back_to_back_apply_in_order(
    server: ServerThread, local: LocalBackend, make_pair: Callable[..., Pair]
) -> None:
    """Six requests submitted before any is awaited give what the local backend gives one at a time."""
    pair = make_pair(seed=31)
    batches = [tinker_data("cross_entropy", 700 + step) for step in range(3)]
    futures = []
    for data in batches:
        futures.append(pair.remote.forward_backward(data, "cross_entropy"))
        futures.append(pair.remote.optim_step(ADAM))
    final = pair.remote.forward(batches[0], "cross_entropy")
    results = [future.result() for future in futures]
    for index, data in enumerate(batches):
        want = pair.mine.forward_backward(local_data(data), "cross_entropy").result()
        assert_outputs_equal(results[2 * index], want)
        want_step = pair.mine.optim_step(local_adam(ADAM)).result()
        np.testing.assert_allclose(results[2 * index + 1].metrics["grad_norm"], want_step["grad_norm"], rtol=RTOL)
    assert_outputs_equal(final.result(), pair.mine.forward(local_data(batches[0]), "cross_entropy").result())


def test_futures_can_be_awaited(make_pair: Callable[..., Pair], base_samplers: tuple[Any, Any]) -> None:
    pair = make_pair(seed=37)
    data = tinker_data("cross_entropy", 800)
    remote_sampler, _ = base_samplers

    async def run() -> tuple[Any, Any, Any, Any]:
        backward = pair.remote.forward_backward(data, "cross_entropy")
        step = pair.remote.optim_step(ADAM)
        sample = remote_sampler.sample(tt.ModelInput.from_ints([1, 2]), 1, tt.SamplingParams(max_tokens=3, seed=1))
        forward = pair.remote.forward(data, "cross_entropy")
        return await backward, await step.result_async(), await sample, await forward.result_async()

    backward, step, sample, forward = asyncio.run(run())
    want = pair.mine.forward_backward(local_data(data), "cross_entropy").result()
    assert_outputs_equal(backward, want)
    want_step = pair.mine.optim_step(local_adam(ADAM)).result()
    np.testing.assert_allclose(step.metrics["grad_norm"], want_step["grad_norm"], rtol=RTOL)
    assert len(sample.sequences[0].tokens) == 3
    assert_outputs_equal(forward, pair.mine.forward(local_data(data), "cross_entropy").result())
