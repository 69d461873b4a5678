"""``vllm/v1/engine/async_llm.py`` of 0.33.0, faked: ``AsyncLLM.from_engine_args(engine_args)``,
``generate(prompt, sampling_params, request_id, *, lora_request=None)`` (an async generator of ``RequestOutput``;
with ``RequestOutputKind.FINAL_ONLY`` only the finished one) and ``shutdown()``.

It computes for real: the base model folder is loaded with transformers, each adapter folder with peft
(``PeftModel.from_pretrained``, a fresh base per ``lora_int_id``), and the requests in flight are decoded together, one
token per request per step, in a loop task on the caller's event loop (``max_in_flight`` records the largest batch).
Each request follows vLLM's rules (read in the 0.33.0 source): ``check_stop`` in ``v1/core/sched/utils.py`` (EOS unless
``ignore_eos``, then ``stop_token_ids`` with the token kept, then the length), stop strings found in the detokenized
text (``check_stop_strings`` in ``v1/engine/detokenizer.py``: the completing token kept, the reason ``stop`` even on the
last allowed token), raw logprobs (``logprobs_mode="raw_logprobs"``) as ``{token: Logprob}`` entries, prompt logprobs
``None`` at position 0, the ``max_logprobs`` and ``max_model_len`` checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import torch

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.logprobs import position_entry
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams, VLLMValidationError

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Request:
    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, model_key: int) -> None:
        self.id = request_id
        self.prompt = prompt
        self.params = params
        self.model_key = model_key
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.tokens: list[int] = []
        self.logprobs: list[dict[int, Any]] = []
        self.prompt_logprobs: list[dict[int, Any] | None] | None = None
        self.text = ""
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()


class AsyncLLM:
    #: every engine made (for the tests' inspection)
    instances: ClassVar[list[AsyncLLM]] = []
    #: while set and not set(): the step loop waits before each step (tests hold it to queue requests)
    step_gate: ClassVar[threading.Event | None] = None

    def __init__(self, args: AsyncEngineArgs) -> None:
        from transformers import AutoTokenizer

        self.args = args
        self.dtype = _DTYPES.get(args.dtype, torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.base = self._load_base()
        self.max_model_len = args.max_model_len or int(self.base.config.max_position_embeddings)
        self.models: dict[int, Any] = {0: self.base}
        self.lora_paths: dict[int, str] = {}
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.max_in_flight = 0
        self.steps = 0
        self.shutdown_called = False
        self._task: asyncio.Task[None] | None = None
        AsyncLLM.instances.append(self)

    @classmethod
    def from_engine_args(
        cls,
        engine_args: AsyncEngineArgs,
        start_engine_loop: bool = True,
        usage_context: Any = None,
        stat_loggers: Any = None,
    ) -> AsyncLLM:
        return cls(engine_args)

    def _load_base(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.args.model, dtype=self.dtype).eval()

    def _model_key(self, lora_request: Any) -> int:
        if lora_request is None:
            return 0
        if not self.args.enable_lora:
            raise VLLMValidationError("LoRA is not enabled (enable_lora=False).")
        key = int(lora_request.lora_int_id)
        if key not in self.models:
            from peft import PeftModel

            path = lora_request.lora_path
            with open(os.path.join(path, "adapter_config.json")) as handle:
                config = json.load(handle)
            missing = {"r", "lora_alpha", "target_modules"} - set(config)
            if missing:  # vllm/lora/peft_helper.py PEFTHelper.from_dict
                raise ValueError(f"Missing required configuration fields: {missing}")
            if config["r"] > self.args.max_lora_rank:  # PEFTHelper.validate_legal
                raise ValueError(f"LoRA rank {config['r']} is greater than max_lora_rank {self.args.max_lora_rank}.")
            self.models[key] = PeftModel.from_pretrained(self._load_base(), path).eval()
            self.lora_paths[key] = path
        return key

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        prompt_text: str | None = None,
        lora_request: Any = None,
        tokenization_kwargs: Any = None,
        trace_headers: Any = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        if self.shutdown_called:
            raise RuntimeError("engine is shut down")
        tokens = list(prompt["prompt_token_ids"])
        if not tokens:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if len(tokens) >= self.max_model_len:  # v1/engine/input_processor.py _validate_model_input
            raise VLLMValidationError(f"The decoder prompt (length {len(tokens)}) is longer than allowed.")
        for asked in (sampling_params.logprobs, sampling_params.prompt_logprobs):
            if asked is not None and asked > self.args.max_logprobs:  # SamplingParams.verify
                raise VLLMValidationError(
                    f"Requested {asked} logprobs, more than max allowed: {self.args.max_logprobs}"
                )
        request = _Request(request_id, tokens, sampling_params, self._model_key(lora_request))
        self.waiting.append(request)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        try:
            while True:
                output = await request.queue.get()
                if isinstance(output, BaseException):
                    raise output
                yield output
                if output.finished:
                    return
        finally:
            for queue in (self.waiting, self.running):
                if request in queue:
                    queue.remove(request)

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdown_called = True
        if self._task is not None:
            self._task.cancel()

    # -- the engine loop --------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        try:
            while self.waiting or self.running:
                gate = AsyncLLM.step_gate
                while gate is not None and not gate.is_set():
                    await asyncio.sleep(0.002)
                self.running += self.waiting
                self.waiting = []
                self.max_in_flight = max(self.max_in_flight, len(self.running))
                try:
                    self._step()
                except Exception as error:
                    for request in self.running:
                        request.queue.put_nowait(error)
                    self.running = []
                await asyncio.sleep(0)
        finally:
            self._task = None

    def _step(self) -> None:
        self.steps += 1
        groups: dict[int, list[_Request]] = {}
        for request in self.running:
            groups.setdefault(request.model_key, []).append(request)
        with torch.inference_mode():
            for key, requests in groups.items():
                model = self.models[key]
                for request in requests:
                    if request.params.prompt_logprobs is not None and request.prompt_logprobs is None:
                        request.prompt_logprobs = self._prompt_logprobs(model, request)
                logits = self._last_logits(model, [request.prompt + request.tokens for request in requests])
                for request, row in zip(requests, logits, strict=True):
                    self._advance(request, row)

    def _last_logits(self, model: Any, rows: list[list[int]]) -> torch.Tensor:
        width = max(len(row) for row in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, width - len(row) :] = torch.tensor(row)
            mask[index, width - len(row) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        return output.logits[:, -1].float()

    def _prompt_logprobs(self, model: Any, request: _Request) -> list[dict[int, Any] | None]:
        ids = torch.tensor([request.prompt])
        logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
        k = request.params.prompt_logprobs
        k = logprobs.shape[-1] if k == -1 else k
        entries: list[dict[int, Any] | None] = [None]
        for position in range(1, len(request.prompt)):
            entries.append(_entry(logprobs[position - 1], request.prompt[position], k))
        return entries

    def _advance(self, request: _Request, logits: torch.Tensor) -> None:
        params = request.params
        logprobs = torch.log_softmax(logits, dim=-1)  # logprobs_mode="raw_logprobs"
        if params.temperature < 1e-5:
            token = int(logits.argmax())
        else:
            scaled = logits / params.temperature
            if 0 < params.top_k < scaled.shape[-1]:
                kth = torch.topk(scaled, params.top_k).values[-1]
                scaled = scaled.masked_fill(scaled < kth, -torch.inf)
            if params.top_p < 1.0:
                ordered, order = torch.sort(scaled, descending=True)
                probs = torch.softmax(ordered, dim=-1)
                drop = (torch.cumsum(probs, dim=-1) - probs) > params.top_p
                drop[0] = False
                scaled = scaled.scatter(0, order, ordered.masked_fill(drop, -torch.inf))
            token = int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=request.generator))
        request.tokens.append(token)
        if params.logprobs is not None:
            request.logprobs.append(_entry(logprobs, token, params.logprobs))
        finish, stop_reason = self._check_stop(request, token)
        stop_string = self._check_stop_strings(request, stop_terminated=finish == "stop")
        if stop_string is not None:
            finish, stop_reason = "stop", stop_string
        if params.output_kind is not RequestOutputKind.FINAL_ONLY or finish is not None:
            request.queue.put_nowait(self._output(request, finish, stop_reason))
        if finish is not None:
            self.running.remove(request)

    def _check_stop(self, request: _Request, token: int) -> tuple[str | None, int | str | None]:
        """``check_stop`` (v1/core/sched/utils.py): EOS, stop tokens (reason: the token), then the length."""
        params = request.params
        if not params.ignore_eos and token == self.eos_token_id:
            return "stop", None
        if token in (params.stop_token_ids or ()):
            return "stop", token
        if len(request.prompt) + len(request.tokens) >= self.max_model_len or len(request.tokens) >= (
            params.max_tokens or self.max_model_len
        ):
            return "length", None
        return None, None

    def _check_stop_strings(self, request: _Request, *, stop_terminated: bool) -> str | None:
        """The detokenizer's stop strings (v1/engine/detokenizer.py): the text of the output tokens (the stopping
        token's own text left out unless ``include_stop_str_in_output``), searched in its new characters."""
        params = request.params
        if not params.detokenize:
            return None
        tokens = request.tokens[:-1] if stop_terminated and not params.include_stop_str_in_output else request.tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        new_chars = len(text) - len(request.text)
        request.text = text
        if not new_chars or not params.stop:
            return None
        best, best_end = None, None
        for stop in params.stop:
            index = text.find(stop, 1 - new_chars - len(stop))
            if index != -1 and (best_end is None or index + len(stop) < best_end):
                best, best_end = stop, index + len(stop)
        return best

    def _output(self, request: _Request, finish: str | None, stop_reason: int | str | None) -> RequestOutput:
        completion = CompletionOutput(
            index=0,
            text=request.text,
            token_ids=list(request.tokens),
            cumulative_logprob=None,
            logprobs=list(request.logprobs) if request.params.logprobs is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
        )
        return RequestOutput(
            request_id=request.id,
            prompt=None,
            prompt_token_ids=request.prompt,
            prompt_logprobs=request.prompt_logprobs,
            outputs=[completion],
            finished=finish is not None,
        )


def _entry(logprobs: torch.Tensor, token: int, k: int) -> dict[int, Any]:
    value = float(logprobs[token])
    rank = int((logprobs > logprobs[token]).sum()) + 1
    top = torch.topk(logprobs, k) if k > 0 else None
    ids = [] if top is None else [int(i) for i in top.indices]
    values = [] if top is None else [float(v) for v in top.values]
    return position_entry(token, rank, ids, values, value)
