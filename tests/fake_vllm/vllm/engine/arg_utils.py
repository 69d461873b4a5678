"""``vllm/engine/arg_utils.py`` of 0.33.0: the engine arguments (a dataclass; the fields the tests use, with
vLLM's defaults)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")


@dataclass
class EngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.92
    max_logprobs: int = 20
    logprobs_mode: str = "raw_logprobs"
    disable_log_stats: bool = False
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    generation_config: str = "auto"

    def __post_init__(self) -> None:
        if self.max_lora_rank not in MAX_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {MAX_LORA_RANKS}, got {self.max_lora_rank}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"bad logprobs_mode {self.logprobs_mode!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.dtype not in ("auto", "half", "float16", "bfloat16", "float", "float32"):
            raise ValueError(f"bad dtype {self.dtype!r}")


@dataclass
class AsyncEngineArgs(EngineArgs):
    enable_log_requests: bool = False
