"""Test doubles: a deterministic in-memory backend and a byte-level renderer (fast; no torch).

The fake "model" is a unigram distribution ``softmax(params)`` over a 512-token vocabulary: logprob(target) =
log_softmax(params)[target]. ``forward_backward`` accumulates the exact gradient of Tinker's cross-entropy
(``-sum(w * lp)``), ``optim_step`` applies plain SGD. Requests run FIFO on one worker thread, each taking
``latency`` seconds, like a remote service.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from tinkerflow.datum import Datum
from tinkerflow.losses import LossFnType
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams
from tinkerflow.shell.backends.protocol import APIFuture, CustomLossFn, ModelInfo
from tinkerflow.tokenizers import Tokenizer, TokenizerError
from tinkerflow.training import AdamParams, ForwardBackwardOutput, LossFnOutput

VOCAB = 512
EOT = 256


class FakeTokenizer:
    """The fake model's tokenizer (a core ``Tokenizer``): ids 0-255 are UTF-8 bytes, ``EOT`` is ``<|eot|>``."""

    name = "fake"
    vocab_size = VOCAB
    bos_token_id = None
    eos_token_id = EOT

    @property
    def added_tokens(self) -> Mapping[str, int]:
        return {"<|eot|>": EOT}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        pieces = (bytes([t]) if t < EOT else f"<|{'eot' if t == EOT else t}|>".encode() for t in map(int, tokens))
        return b"".join(pieces).decode("utf-8", errors="replace")

    def token_id(self, token: str) -> int:
        if token == "<|eot|>":
            return EOT
        if len(token.encode("utf-8")) == 1:
            return token.encode("utf-8")[0]
        raise TokenizerError("FakeTokenizer", "token", f"{token!r} is not a single token.")


class StubSampler:
    """A sampling client for tests: a subclass answers :meth:`respond` (``sample`` without the prompt-logprob
    options, which stubs ignore); prompt logprobs and the tokenizer are not supported unless a subclass adds them."""

    base_model = "stub"

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        return self.respond(prompt, num_samples, sampling_params)

    def respond(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams
    ) -> APIFuture[SampleResponse]:
        raise NotImplementedError

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        raise NotImplementedError("not used by the tests")

    def get_tokenizer(self) -> Tokenizer:
        raise NotImplementedError("not used by the tests")

    def get_base_model(self) -> str:
        return self.base_model


class FakeSampler(StubSampler):
    """Samples the fake model's most likely token, up to 8 times."""

    base_model = "fake"

    def __init__(self, params: np.ndarray) -> None:
        self.params = params.copy()

    def respond(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams
    ) -> APIFuture[SampleResponse]:
        logprobs = self.params - np.logaddexp.reduce(self.params)
        token = int(np.argmax(logprobs))
        length = min(sampling_params.max_tokens or 8, 8)
        tokens = np.full(length, token)
        sequence = SampledSequence(tokens_T=tokens, stop_reason="length", logprobs_T=np.full(length, logprobs[token]))
        return APIFuture.completed(SampleResponse(sequences=(sequence,) * num_samples))

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()


class RecordingSampler(StubSampler):
    """Answers every request with fixed sequences (a crafted response, or counting tokens)."""

    base_model = "recording"

    def __init__(self, tokens: Sequence[int] | None = None, logprobs: bool = True) -> None:
        self.tokens = tokens
        self.logprobs = logprobs
        self.requests: list[tuple[ModelInput, int, SamplingParams]] = []

    def respond(
        self, prompt: ModelInput, num_samples: int, sampling_params: SamplingParams
    ) -> APIFuture[SampleResponse]:
        self.requests.append((prompt, num_samples, sampling_params))
        tokens = list(self.tokens) if self.tokens is not None else [len(self.requests)]
        sequences = [
            SampledSequence(tokens, "stop", np.full(len(tokens), -0.25) if self.logprobs else None)
            for _ in range(num_samples)
        ]
        return APIFuture.completed(SampleResponse(sequences=sequences))


class FakeTrainingClient:
    def __init__(self, backend: FakeBackend, params: np.ndarray, latency: float) -> None:
        self.backend = backend
        self.params = params.copy()
        self.grad = np.zeros_like(self.params)
        self.steps = 0
        self.latency = latency
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.busy_seconds = 0.0
        self.requests = 0

    def _submit(self, fn):  # type: ignore[no-untyped-def]  # test glue
        def timed():  # type: ignore[no-untyped-def]
            began = time.perf_counter()
            if self.latency:
                time.sleep(self.latency)
            result = fn()
            self.busy_seconds += time.perf_counter() - began
            self.requests += 1
            return result

        return APIFuture(self.executor.submit(timed))

    def _outputs(self, data: Sequence[Datum]) -> tuple[list[np.ndarray], float, np.ndarray]:
        logprobs = self.params - np.logaddexp.reduce(self.params)
        probs = np.exp(logprobs)
        outputs, loss, grad = [], 0.0, np.zeros_like(self.params)
        for datum in data:
            lp = logprobs[datum.target_tokens_T].astype(np.float32)
            w = datum.weights_T if datum.weights_T is not None else np.ones(datum.length, np.float32)
            outputs.append(lp)
            loss -= float((w * lp).sum())
            np.add.at(grad, datum.target_tokens_T, -w)
            grad += float(w.sum()) * probs
        return outputs, loss, grad

    def forward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        def run() -> ForwardBackwardOutput:
            outputs, loss, _ = self._outputs(data)
            return ForwardBackwardOutput(tuple(LossFnOutput(lp) for lp in outputs), {"loss:sum": loss})

        return self._submit(run)

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: Mapping[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        def run() -> ForwardBackwardOutput:
            outputs, loss, grad = self._outputs(data)
            self.grad += grad
            return ForwardBackwardOutput(tuple(LossFnOutput(lp) for lp in outputs), {"loss:sum": loss})

        return self._submit(run)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn: CustomLossFn) -> APIFuture[ForwardBackwardOutput]:
        raise NotImplementedError("not used by the loops under test")

    def optim_step(self, adam_params: AdamParams) -> APIFuture[Mapping[str, float]]:
        def run() -> Mapping[str, float]:
            self.params -= adam_params.learning_rate * self.grad
            self.grad[:] = 0
            self.steps += 1
            return {}

        return self._submit(run)

    def save_state(self, name: str) -> APIFuture[str]:
        def run() -> str:
            if self.backend.crash_on_save == name:
                raise RuntimeError(f"simulated crash while saving {name}")
            path = f"fake://state/{name}"
            self.backend.store[path] = (self.params.copy(), self.steps)
            return path

        return self._submit(run)

    def load_state(self, path: str, *, with_optimizer: bool = True) -> APIFuture[None]:
        def run() -> None:
            params, steps = self.backend.store[path]
            self.params, self.steps = params.copy(), steps

        return self._submit(run)

    def save_weights_for_sampler(self, name: str) -> APIFuture[str]:
        def run() -> str:
            path = f"fake://sampler/{name}"
            self.backend.store[path] = (self.params.copy(), self.steps)
            return path

        return self._submit(run)

    def create_sampling_client(self, model_path: str) -> APIFuture[FakeSampler]:
        return APIFuture.completed(FakeSampler(self.backend.store[model_path][0]))

    def save_weights_and_get_sampling_client(self) -> APIFuture[FakeSampler]:
        return self._submit(lambda: FakeSampler(self.params))

    def get_info(self) -> ModelInfo:
        return ModelInfo(base_model="fake", model_id="fake-run", is_lora=True, lora_rank=1, vocab_size=VOCAB)

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()


class FakeBackend:
    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.store: dict[str, tuple[np.ndarray, int]] = {}
        self.crash_on_save: str | None = None
        self.clients: list[FakeTrainingClient] = []
        self.lock = threading.Lock()

    def create_lora_training_client(
        self,
        base_model: str,
        *,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> APIFuture[FakeTrainingClient]:
        client = FakeTrainingClient(self, np.zeros(VOCAB), self.latency)
        self.clients.append(client)
        return APIFuture.completed(client)

    def create_training_client_from_state(
        self, path: str, *, with_optimizer: bool = False
    ) -> APIFuture[FakeTrainingClient]:
        params, steps = self.store[path]
        client = FakeTrainingClient(self, params, self.latency)
        client.steps = steps
        self.clients.append(client)
        return APIFuture.completed(client)

    def create_sampling_client(
        self, *, model_path: str | None = None, base_model: str | None = None
    ) -> APIFuture[FakeSampler]:
        return APIFuture.completed(FakeSampler(self.store[model_path][0] if model_path else np.zeros(VOCAB)))

    def get_tokenizer(self, base_model: str) -> FakeTokenizer:
        return FakeTokenizer()
