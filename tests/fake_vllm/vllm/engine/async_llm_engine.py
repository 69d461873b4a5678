"""``vllm/engine/async_llm_engine.py`` of 0.33.0: ``AsyncLLMEngine = AsyncLLM``."""

from vllm.v1.engine.async_llm import AsyncLLM

AsyncLLMEngine = AsyncLLM
