"""A fake of the subset of vLLM 0.33.0's API that tinkerflow's vLLM sampling engine uses, for CPU tests.

Names, signatures and structures follow the vLLM 0.33.0 source (``vllm/__init__.py`` exports ``AsyncEngineArgs``,
``AsyncLLMEngine``, ``SamplingParams``, ``TokensPrompt``, ``RequestOutput``, ``CompletionOutput``); the engine
computes for real with transformers and peft (see :mod:`vllm.v1.engine.async_llm`). Only
``tests/test_vllm_engine.py`` puts this folder on ``sys.path``.
"""

from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.engine.async_llm_engine import AsyncLLMEngine
from vllm.inputs import TokensPrompt
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams

__all__ = [
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineArgs",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "TokensPrompt",
]
