"""TinkerBackend against a fake of the SDK's client objects that records calls and returns canned results.

The live smoke test at the bottom runs only with a key:
``TINKER_API_KEY=... python -m pytest tests/test_tinker_backend.py -k live``.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkerflow import AdamParams, Datum, ModelInput, SamplingParams
from tinkerflow import interop as io
from tinkerflow import testing as tft
from tinkerflow.errors import ConfigError, ValidationError
from tinkerflow.tokenizers import Tokenizer

tt = pytest.importorskip("tinker.types")
torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.tinker import TinkerBackend, TinkerSamplingClient, TinkerTrainingClient  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


class FakeFuture:
    """Like the SDK's APIFuture: ``result()`` and ``future()``."""

    def __init__(self, value: Any) -> None:
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if isinstance(value, BaseException):
            self._future.set_exception(value)
        else:
            self._future.set_result(value)

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)

    def future(self) -> concurrent.futures.Future[Any]:
        return self._future


class FakeTokenizer:
    """A transformers-like tokenizer over bytes."""

    eos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [*([1] if add_special_tokens else []), *(byte + 2 for byte in text.encode())]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(token - 2 for token in ids if token >= 2).decode(errors="replace")

    def __len__(self) -> int:
        return 258


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


class FakeSamplingClient:
    def __init__(self, recorder: Recorder, answer: str = " A typed pipeline.\n") -> None:
        self.recorder = recorder
        self.answer = answer

    def sample(self, **kwargs: Any) -> FakeFuture:
        self.recorder.record("sample", **kwargs)
        tokens = FakeTokenizer().encode(self.answer, add_special_tokens=False)[: kwargs["sampling_params"].max_tokens]
        sequences = [
            tt.SampledSequence(
                stop_reason="stop",
                sequence_id=f"s{i}",
                tokens_np=np.array(tokens, dtype=np.int32),
                logprobs_np=np.full(len(tokens), -0.5, dtype=np.float32),
            )
            for i in range(kwargs["num_samples"])
        ]
        prompt_length = kwargs["prompt"].length
        prompt = np.r_[np.nan, np.full(prompt_length - 1, -1.0)].astype(np.float32)
        return FakeFuture(
            tt.SampleResponse(
                sequences=sequences, prompt_logprobs_np=prompt if kwargs["include_prompt_logprobs"] else None
            )
        )

    def compute_logprobs(self, prompt: Any) -> FakeFuture:
        self.recorder.record("compute_logprobs", prompt)
        return FakeFuture([None] + [-1.5] * (prompt.length - 1))

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def get_base_model(self) -> str:
        return "Qwen/Qwen3-8B"


class FakeTrainingClient:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def _output(self, data: list[Any], loss: float) -> Any:
        outputs = [
            {"logprobs": tt.TensorData.from_numpy(np.full(d.model_input.length, -2.0, dtype=np.float32))} for d in data
        ]
        return tt.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs, metrics={"loss:sum": loss}
        )

    def forward(self, data: list[Any], loss_fn: str, loss_fn_config: Any = None) -> FakeFuture:
        self.recorder.record("forward", data, loss_fn, loss_fn_config)
        return FakeFuture(self._output(data, 1.0))

    def forward_backward(self, data: list[Any], loss_fn: str, loss_fn_config: Any = None) -> FakeFuture:
        self.recorder.record("forward_backward", data, loss_fn, loss_fn_config)
        return FakeFuture(self._output(data, 2.0))

    def forward_backward_custom(self, data: list[Any], loss_fn: Any) -> FakeFuture:
        # what the SDK does: the custom loss gets per-datum logprob tensors and is differentiated client-side
        logprobs = [torch.full((d.model_input.length,), -2.0, requires_grad=True) for d in data]
        loss, metrics = loss_fn(data, logprobs)
        loss.backward()
        self.recorder.record("forward_backward_custom", data, [lp.grad for lp in logprobs], metrics)
        output = self._output(data, float(loss.detach()))
        return FakeFuture(output)

    def optim_step(self, params: Any) -> FakeFuture:
        self.recorder.record("optim_step", params)
        return FakeFuture(tt.OptimStepResponse(metrics={"grad_norm": 0.5}))

    def save_state(self, name: str) -> FakeFuture:
        self.recorder.record("save_state", name)
        return FakeFuture(tt.SaveWeightsResponse(path=f"tinker://run-1/weights/{name}"))

    def save_weights_for_sampler(self, name: str) -> FakeFuture:
        self.recorder.record("save_weights_for_sampler", name)
        return FakeFuture(tt.SaveWeightsForSamplerResponse(path=f"tinker://run-1/sampler_weights/{name}"))

    def load_state(self, path: str) -> FakeFuture:
        self.recorder.record("load_state", path)
        return FakeFuture(tt.LoadWeightsResponse(path=path))

    def load_state_with_optimizer(self, path: str) -> FakeFuture:
        self.recorder.record("load_state_with_optimizer", path)
        return FakeFuture(tt.LoadWeightsResponse(path=path))

    def create_sampling_client(self, model_path: str) -> FakeFuture:
        self.recorder.record("create_sampling_client", model_path)
        return FakeFuture(FakeSamplingClient(self.recorder))

    def save_weights_and_get_sampling_client(self) -> FakeFuture:
        self.recorder.record("save_weights_and_get_sampling_client")
        return FakeFuture(FakeSamplingClient(self.recorder))

    def get_info(self) -> Any:
        return tt.GetInfoResponse(
            model_data=tt.ModelData(model_name="Qwen/Qwen3-8B", tokenizer_id="Qwen/Qwen3-8B"),
            model_id="run-1",
            is_lora=True,
            lora_rank=8,
        )

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()


class FakeServiceClient:
    def __init__(self) -> None:
        self.recorder = Recorder()

    def create_lora_training_client(self, **kwargs: Any) -> FakeFuture:
        self.recorder.record("create_lora_training_client", **kwargs)
        return FakeFuture(FakeTrainingClient(self.recorder))

    def create_training_client_from_state(self, path: str) -> FakeFuture:
        self.recorder.record("create_training_client_from_state", path)
        return FakeFuture(FakeTrainingClient(self.recorder))

    def create_training_client_from_state_with_optimizer(self, path: str) -> FakeFuture:
        self.recorder.record("create_training_client_from_state_with_optimizer", path)
        return FakeFuture(FakeTrainingClient(self.recorder))

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None) -> FakeFuture:
        self.recorder.record("create_sampling_client", model_path=model_path, base_model=base_model)
        return FakeFuture(FakeSamplingClient(self.recorder))


@pytest.fixture
def service() -> FakeServiceClient:
    return FakeServiceClient()


@pytest.fixture
def client(service: FakeServiceClient) -> TinkerTrainingClient:
    return TinkerBackend(service).create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=3).result()


def _sdk_datum_equal(sdk: Any, datum: Datum) -> bool:
    expected = io.datum_to_tinker(datum)
    return (
        sdk.model_input == expected.model_input
        and sdk.loss_fn_inputs.keys() == expected.loss_fn_inputs.keys()
        and all(
            np.array_equal(sdk.loss_fn_inputs[k].to_numpy(), expected.loss_fn_inputs[k].to_numpy())
            for k in sdk.loss_fn_inputs
        )
    )


def test_create_lora_training_client_passes_every_setting(service: FakeServiceClient) -> None:
    backend = TinkerBackend(service)
    client = backend.create_lora_training_client("Qwen/Qwen3-8B", rank=8, seed=3, train_unembed=False).result()
    assert isinstance(client, TinkerTrainingClient)
    assert service.recorder.calls == [
        (
            "create_lora_training_client",
            (),
            {
                "base_model": "Qwen/Qwen3-8B",
                "rank": 8,
                "seed": 3,
                "train_mlp": True,
                "train_attn": True,
                "train_unembed": False,
            },
        )
    ]
    info = client.get_info()
    assert (info.base_model, info.model_id, info.is_lora, info.lora_rank, info.tokenizer_id) == (
        "Qwen/Qwen3-8B",
        "run-1",
        True,
        8,
        "Qwen/Qwen3-8B",
    )


@settings(max_examples=25)
@given(st.lists(tft.datums(min_length=1, loss_inputs=("weights",)), min_size=1, max_size=3))
def test_forward_backward_sends_exact_datums_and_converts_the_result(data: list[Datum]) -> None:
    service = FakeServiceClient()
    client = TinkerBackend(service).create_lora_training_client("m").result()
    output = client.forward_backward(data, "cross_entropy").result()
    name, (sent, loss_fn, config), _ = service.recorder.calls[-1]
    assert (name, loss_fn, config) == ("forward_backward", "cross_entropy", None)
    assert all(_sdk_datum_equal(s, d) for s, d in zip(sent, data, strict=True))
    assert output.loss == 2.0
    assert [lp.shape for lp in output.logprobs_D] == [(d.length,) for d in data]


def test_forward_and_loss_config_pass_through(client: TinkerTrainingClient, service: FakeServiceClient) -> None:
    datum = Datum(
        model_input=ModelInput.from_tokens([1, 2, 3]),
        target_tokens_T=[2, 3, 4],
        logprobs_T=[-1.0, -1.0, -1.0],
        advantages_T=[0.5, 0.5, 0.5],
        mask_T=[1.0, 1.0, 0.0],
    )
    assert client.forward([datum], "ppo", {"clip_high_threshold": 1.3}).result().loss == 1.0
    name, (sent, loss_fn, config), _ = service.recorder.calls[-1]
    assert (name, loss_fn, config) == ("forward", "ppo", {"clip_high_threshold": 1.3})
    assert "mask" not in sent[0].loss_fn_inputs  # tinkerflow bookkeeping is not sent


def test_bad_input_is_refused_before_anything_is_sent(client: TinkerTrainingClient, service: FakeServiceClient) -> None:
    datum = Datum(model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 3], weights_T=[1.0, 1.0])
    before = list(service.recorder.calls)
    with pytest.raises(ValidationError, match="advantages"):
        client.forward_backward([datum], "importance_sampling")
    with pytest.raises(ConfigError):
        client.forward_backward([datum], "kl")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="beta"):
        client.forward_backward([datum], "dro")
    with pytest.raises(ConfigError):
        client.forward_backward([datum], "cross_entropy", {"clip_low_threshold": 0.5})
    with pytest.raises(ValidationError):
        client.forward_backward([], "cross_entropy")
    with pytest.raises(ValidationError):
        client.optim_step(object())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tinker://"):
        client.load_state("local://run/weights/x")
    with pytest.raises(ConfigError):
        TinkerBackend(service).create_lora_training_client("m", rank=0)
    assert service.recorder.calls == before


def test_custom_loss_gets_tinkerflow_datums(client: TinkerTrainingClient, service: FakeServiceClient) -> None:
    data = [Datum(model_input=ModelInput.from_tokens([1, 2]), target_tokens_T=[2, 3], weights_T=[1.0, 0.5])]
    seen: list[Sequence[Datum]] = []

    def loss_fn(batch: Sequence[Datum], logprobs: Sequence[Any]) -> tuple[Any, dict[str, float]]:
        seen.append(batch)
        weights = torch.tensor(np.array(batch[0].weights_T))
        return -(weights * logprobs[0]).sum(), {"custom/n:sum": 1.0}

    output = client.forward_backward_custom(data, loss_fn).result()
    assert seen[0][0] is data[0]
    _, (_, grads, metrics), _ = service.recorder.calls[-1]
    np.testing.assert_allclose(grads[0].numpy(), [-1.0, -0.5])
    assert metrics == {"custom/n:sum": 1.0}
    assert output.loss == pytest.approx(3.0)


def test_optimizer_checkpoints_and_sampling_clients(client: TinkerTrainingClient, service: FakeServiceClient) -> None:
    metrics = client.optim_step(AdamParams(learning_rate=3e-4, weight_decay=0.01, grad_clip_norm=1.0)).result()
    assert metrics == {"grad_norm": 0.5}
    sent = service.recorder.calls[-1][1][0]
    assert io.adam_params_from_tinker(sent) == AdamParams(learning_rate=3e-4, weight_decay=0.01, grad_clip_norm=1.0)
    state = client.save_state("step-10").result()
    assert state == "tinker://run-1/weights/step-10"
    assert client.save_weights_for_sampler("s").result() == "tinker://run-1/sampler_weights/s"
    client.load_state(state).result()
    client.load_state(state, with_optimizer=False).result()
    assert service.recorder.names()[-2:] == ["load_state_with_optimizer", "load_state"]
    assert isinstance(client.create_sampling_client("tinker://run-1/sampler_weights/s").result(), TinkerSamplingClient)
    assert isinstance(client.save_weights_and_get_sampling_client().result(), TinkerSamplingClient)

    backend = TinkerBackend(service)
    backend.create_training_client_from_state(state).result()
    backend.create_training_client_from_state(state, with_optimizer=True).result()
    assert service.recorder.names()[-2:] == [
        "create_training_client_from_state",
        "create_training_client_from_state_with_optimizer",
    ]
    backend.create_sampling_client(base_model="Qwen/Qwen3-8B").result()
    assert service.recorder.calls[-1][2] == {"model_path": None, "base_model": "Qwen/Qwen3-8B"}
    with pytest.raises(ConfigError):
        backend.create_sampling_client()


@settings(max_examples=25)
@given(params=tft.sampling_params(), n=st.integers(1, 3), prompt=st.lists(st.integers(0, 255), min_size=1, max_size=8))
def test_sample_converts_both_ways(params: SamplingParams, n: int, prompt: list[int]) -> None:
    service = FakeServiceClient()
    sampler = TinkerBackend(service).create_sampling_client(base_model="m").result()
    params = SamplingParams(
        max_tokens=params.max_tokens or 5,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        stop_strings=params.stop_strings,
        stop_tokens=params.stop_tokens,
        seed=params.seed,
    )
    response = sampler.sample(ModelInput.from_tokens(prompt), n, params, include_prompt_logprobs=True).result()
    _, _, kwargs = service.recorder.calls[-1]
    assert io.sampling_params_from_tinker(kwargs["sampling_params"]) == params
    assert io.model_input_from_tinker(kwargs["prompt"]) == ModelInput.from_tokens(prompt)
    assert (kwargs["num_samples"], kwargs["include_prompt_logprobs"], kwargs["topk_prompt_logprobs"]) == (n, True, 0)
    assert len(response.sequences) == n
    assert response.prompt_logprobs_T is not None
    assert np.isnan(response.prompt_logprobs_T[0])


def test_compute_logprobs_maps_none_to_nan(service: FakeServiceClient) -> None:
    sampler = TinkerBackend(service).create_sampling_client(model_path="tinker://run-1/sampler_weights/s").result()
    values = sampler.compute_logprobs(ModelInput.from_tokens([5, 6, 7])).result()
    assert values.dtype == np.float32
    assert np.isnan(values[0])
    assert values[1:].tolist() == [-1.5, -1.5]
    assert sampler.get_base_model() == "Qwen/Qwen3-8B"
    assert sampler.get_tokenizer().decode(sampler.get_tokenizer().encode("hi")) == "hi"
    assert isinstance(sampler.get_tokenizer(), Tokenizer)


def test_backend_tokenizer_comes_from_the_shell_loader(service: FakeServiceClient) -> None:
    tokenizer = TinkerBackend(service).get_tokenizer("gpt2")  # an offline vocabulary: no service call, no network
    assert isinstance(tokenizer, Tokenizer)
    assert tokenizer.decode(tokenizer.encode("hello")) == "hello"
    assert service.recorder.calls == []


def test_sdk_errors_reach_the_caller(service: FakeServiceClient) -> None:
    class Failing(FakeServiceClient):
        def create_lora_training_client(self, **kwargs: Any) -> FakeFuture:
            return FakeFuture(RuntimeError("quota exceeded"))

    with pytest.raises(RuntimeError, match="quota"):
        TinkerBackend(Failing()).create_lora_training_client("m").result()


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("backend_pipeline", ROOT / "examples" / "backend_pipeline.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["backend_pipeline"] = module
    spec.loader.exec_module(module)
    return module


def test_the_same_pipeline_runs_on_both_backends(tmp_path: pathlib.Path, service: FakeServiceClient) -> None:
    pytest.importorskip("peft")
    from tinkerflow.shell.backends.local.backend import LocalBackend

    example = _load_example()
    text = example.pipeline(TinkerBackend(service), "Qwen/Qwen3-8B", steps=3)
    assert text == " A typed pipeline.\n"
    assert service.recorder.names().count("forward_backward") == 3
    assert service.recorder.names().count("optim_step") == 3
    with LocalBackend(checkpoint_dir=tmp_path, device="cpu") as local:
        # a tiny random model learns the answer as well: the pipeline is backend-agnostic
        text = example.pipeline(local, "tiny-llama:hidden=128,intermediate=256,vocab=300,context=128", 60, 3e-3)
    assert text == " A typed pipeline.\n"


@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY (the live Tinker service)")
def test_live_smoke() -> None:  # pragma: no cover - needs the service
    example = _load_example()
    with TinkerBackend() as backend:
        text = example.pipeline(backend, os.environ.get("TINKER_SMOKE_MODEL", "Qwen/Qwen3-4B-Instruct-2507"), steps=6)
    assert isinstance(text, str)


class _RecordingService:
    """Stands in for ``tinker.ServiceClient``: records how its session was closed."""

    closed: ClassVar[list[str]] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs

    def close(self, status: str, detail: str | None = None) -> concurrent.futures.Future[None]:
        _RecordingService.closed.append(status)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_result(None)
        return done


def test_an_owned_service_session_is_finished_with_the_run_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import tinker

    monkeypatch.setattr(tinker, "ServiceClient", _RecordingService)
    _RecordingService.closed = []
    with TinkerBackend(api_key="k") as backend:
        assert isinstance(backend.service, _RecordingService)

    def failing_run() -> None:
        with TinkerBackend(api_key="k") as backend:
            _ = backend.service
            raise RuntimeError("run failed")

    with pytest.raises(RuntimeError):
        failing_run()
    with TinkerBackend(service_client=_RecordingService()) as backend:  # not owned: left open
        pass
    assert _RecordingService.closed == ["success", "errored"]
