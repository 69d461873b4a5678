"""Renderers: chat messages <-> token sequences, as values plus pure functions.

Start here::

    from tinkerflow.shell.io.tokenizers import load_tokenizer
    from tinkerflow import render

    tokenizer = load_tokenizer("Qwen/Qwen3-8B")          # hub cache, or the offline qwen3 vocabulary
    renderer = render.get_renderer("qwen3", tokenizer)  # or render.renderer_for_model("Qwen/Qwen3-8B", tokenizer)
    example = render.build_supervised_example(renderer, conversation, train_on="all_assistant_messages")
    prompt = render.build_generation_prompt(renderer, conversation.messages[:-1])
    parsed = render.parse_response(renderer, sampled_tokens)   # message + Termination

Modules, one concern each: ``records`` (errors, modes, terminations, pieces, the records produced),
``control`` (control-token spellings), ``renderer`` (the :class:`Renderer` base), ``family`` (helpers families
share), ``plan`` / ``assemble`` / ``packing`` (conversation -> units -> tokens and weights, packed batches),
``build`` (the functions above), one module per family, ``chat_template`` (any Jinja chat template), ``lineup``
(tinker-cookbook 0.6.1's models) and ``registry``.

See ``docs/rendering.md`` for the train-on modes, parsing and terminations, and how to add a renderer.
"""

from tinkerflow.render.build import (
    build_generation_prompt,
    build_supervised_batch,
    build_supervised_example,
    build_supervised_examples,
    parse_response,
)
from tinkerflow.render.chat_template import ChatTemplateRenderer, TemplateFeatures
from tinkerflow.render.chatml import ChatMLRenderer, SmolLM2Renderer
from tinkerflow.render.control import encode_control_text
from tinkerflow.render.deepseek_v3 import DeepSeekV3Renderer, DeepSeekV3ThinkingRenderer
from tinkerflow.render.family import PieceList
from tinkerflow.render.gpt_oss import GptOssRenderer
from tinkerflow.render.lineup import LINEUP, LineupModel
from tinkerflow.render.llama3 import Llama3Renderer
from tinkerflow.render.qwen3 import Qwen3DisableThinkingRenderer, Qwen3InstructRenderer, Qwen3Renderer
from tinkerflow.render.qwen3_vl import Qwen3VLInstructRenderer, Qwen3VLRenderer
from tinkerflow.render.records import (
    ParsedResponse,
    Piece,
    RenderContext,
    RenderedMessage,
    RenderError,
    StopSequences,
    SupervisedExample,
    Termination,
    TrainOn,
    TrainOnWhat,
)
from tinkerflow.render.registry import (
    DEFAULT_REGISTRY,
    RendererFactory,
    RendererRegistry,
    UnknownModelError,
    get_renderer,
    renderer_for_model,
    renderer_name_for_model,
)
from tinkerflow.render.renderer import Renderer
from tinkerflow.render.role_colon import RoleColonRenderer

__all__ = [
    "DEFAULT_REGISTRY",
    "LINEUP",
    "ChatMLRenderer",
    "ChatTemplateRenderer",
    "DeepSeekV3Renderer",
    "DeepSeekV3ThinkingRenderer",
    "GptOssRenderer",
    "LineupModel",
    "Llama3Renderer",
    "ParsedResponse",
    "Piece",
    "PieceList",
    "Qwen3DisableThinkingRenderer",
    "Qwen3InstructRenderer",
    "Qwen3Renderer",
    "Qwen3VLInstructRenderer",
    "Qwen3VLRenderer",
    "RenderContext",
    "RenderError",
    "RenderedMessage",
    "Renderer",
    "RendererFactory",
    "RendererRegistry",
    "RoleColonRenderer",
    "SmolLM2Renderer",
    "StopSequences",
    "SupervisedExample",
    "TemplateFeatures",
    "Termination",
    "TrainOn",
    "TrainOnWhat",
    "UnknownModelError",
    "build_generation_prompt",
    "build_supervised_batch",
    "build_supervised_example",
    "build_supervised_examples",
    "encode_control_text",
    "get_renderer",
    "parse_response",
    "renderer_for_model",
    "renderer_name_for_model",
]
