"""Shared bases of the backends: each Tinker-shaped public signature, declared and checked once. (Shell.)

:class:`BackendBase` and :class:`SamplingClientBase` own the public methods whose signatures and argument checks
every backend shares (the :class:`~tinkerflow.shell.backends.protocol.Backend` and
:class:`~tinkerflow.shell.backends.protocol.SamplingClient` shapes, i.e. Tinker's ``ServiceClient`` and
``SamplingClient``). Each checks its arguments in the caller's thread, then calls one narrow hook with checked,
typed values; :class:`~tinkerflow.shell.backends.tinker.TinkerBackend` and
:class:`~tinkerflow.shell.backends.local.LocalBackend` (and their sampling clients) implement only the hooks.
Loops keep typing against the protocols.
"""

from __future__ import annotations

import abc
from typing import Generic, TypedDict, TypeVar, cast

import attrs
import numpy as np

from tinkerflow._validate import positive_int
from tinkerflow.model_input import ModelInput
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.shell.backends.protocol import (
    APIFuture,
    SamplingClient,
    TrainingClient,
    check_one_source,
    check_sample_request,
)

__all__ = ["BackendBase", "LoraOptions", "LoraSpec", "SamplingClientBase"]

TrainingT = TypeVar("TrainingT", bound=TrainingClient)
SamplingT = TypeVar("SamplingT", bound=SamplingClient)
PromptT = TypeVar("PromptT")


@attrs.frozen
class LoraSpec:
    """The LoRA options of :meth:`BackendBase.create_lora_training_client`, as one value (``rank`` checked).

    Attributes:
        rank: the adapters' rank (``>= 1``).
        seed: the seed of the adapters' initialization (``None``: the backend picks one).
        train_mlp: whether the MLP projections get adapters.
        train_attn: whether the attention projections get adapters.
        train_unembed: whether the unembedding gets an adapter.
    """

    rank: int
    seed: int | None
    train_mlp: bool
    train_attn: bool
    train_unembed: bool


class LoraOptions(TypedDict, total=False):
    """The keyword options of :meth:`BackendBase.create_lora_training_client` (each optional), for a backend
    that overrides the method only to give ``base_model`` a default."""

    rank: int
    seed: int | None
    train_mlp: bool
    train_attn: bool
    train_unembed: bool


class BackendBase(abc.ABC, Generic[TrainingT, SamplingT]):
    """The client-creating calls whose signature and checks every backend shares.

    A subclass implements :meth:`_create_lora_client`, :meth:`_sampling_client_from_path` and
    :meth:`_sampling_client_from_model`; ``TrainingT`` and ``SamplingT`` are its concrete client types.
    """

    def create_lora_training_client(
        self,
        base_model: str,
        *,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
    ) -> APIFuture[TrainingT]:
        """A LoRA training run on ``base_model`` (adapters of ``rank`` on the selected layers)."""
        positive_int(rank, "create_lora_training_client", "rank")
        return self._create_lora_client(base_model, LoraSpec(rank, seed, train_mlp, train_attn, train_unembed))

    def create_sampling_client(
        self, *, model_path: str | None = None, base_model: str | None = None
    ) -> APIFuture[SamplingT]:
        """A sampling client of saved weights (``model_path``) or of a base model (exactly one of the two)."""
        check_one_source(model_path, base_model)
        if model_path is not None:
            return self._sampling_client_from_path(model_path)
        return self._sampling_client_from_model(cast("str", base_model))  # check_one_source: it is given

    @abc.abstractmethod
    def _create_lora_client(self, base_model: str, spec: LoraSpec) -> APIFuture[TrainingT]:
        """Start creating the LoRA training client (``spec.rank`` is checked; the backend checks the rest)."""

    @abc.abstractmethod
    def _sampling_client_from_path(self, model_path: str) -> APIFuture[SamplingT]:
        """Start creating a sampling client of the weights saved at ``model_path``."""

    @abc.abstractmethod
    def _sampling_client_from_model(self, base_model: str) -> APIFuture[SamplingT]:
        """Start creating a sampling client of the base model ``base_model``."""


class SamplingClientBase(abc.ABC, Generic[PromptT]):
    """The sampling calls whose signature and checks every backend shares.

    A subclass implements :meth:`_checked_prompt` (the prompt checked and in the form it runs, ``PromptT``),
    :meth:`_sample` and :meth:`_compute_logprobs`.
    """

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        """``num_samples`` continuations of ``prompt``, each with the logprob of every sampled token.

        With ``include_prompt_logprobs`` the response also holds the logprob of each prompt token given the ones
        before it (NaN at position 0); ``topk_prompt_logprobs=k`` adds the k most likely tokens per position.
        """
        checked = self._checked_prompt(prompt, "sample")
        check_sample_request(prompt, num_samples, sampling_params, topk_prompt_logprobs)
        return self._sample(checked, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs)

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        """The logprob of each token of ``prompt`` given the tokens before it (float32, NaN at position 0)."""
        return self._compute_logprobs(self._checked_prompt(prompt, "compute_logprobs"))

    @abc.abstractmethod
    def _checked_prompt(self, prompt: ModelInput, where: str) -> PromptT:
        """``prompt`` in the form this client runs, after checking it (raise naming ``where``)."""

    @abc.abstractmethod
    def _sample(
        self, prompt: PromptT, num_samples: int, params: SamplingParams, prompt_logprobs: bool, topk: int
    ) -> APIFuture[SampleResponse]:
        """Start sampling (every argument checked; ``prompt_logprobs`` is ``include_prompt_logprobs`` as given)."""

    @abc.abstractmethod
    def _compute_logprobs(self, prompt: PromptT) -> APIFuture[np.ndarray]:
        """Start scoring the checked prompt."""
