"""Adapters between tinkerflow records and tinker-cookbook 0.6.1 (test-only)."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from tinkerflow.chat import Conversation, ImagePart, Message, TextPart, ThinkingPart, ToolSpec
from tinkerflow.render import TrainOnWhat
from tinkerflow.shell.io.tokenizers import offline_tokenizer, offline_tokenizer_dir


@functools.cache
def hf_tokenizer(name: str) -> Any:
    """A transformers fast tokenizer over the same offline vocabulary (built into the cache first)."""
    from transformers import AutoTokenizer

    offline_tokenizer(name)
    return AutoTokenizer.from_pretrained(str(offline_tokenizer_dir(name)), clean_up_tokenization_spaces=False)


def _content(message: Message) -> Any:
    if isinstance(message.content, str):
        return message.content
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ThinkingPart):
            parts.append({"type": "thinking", "thinking": part.thinking})
        elif isinstance(part, ImagePart):
            from PIL import Image

            parts.append({"type": "image", "image": Image.open(io.BytesIO(part.data))})
    return parts


def to_cookbook_message(message: Message) -> dict[str, Any]:
    from tinker_cookbook.renderers import ToolCall

    result: dict[str, Any] = {"role": message.role, "content": _content(message)}
    if message.tool_calls:
        result["tool_calls"] = [
            ToolCall(function=ToolCall.FunctionBody(name=call.name, arguments=call.arguments), id=call.id)
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        result["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        result["name"] = message.name
    if message.trainable is not None:
        result["trainable"] = message.trainable
    return result


def tool_spec_dict(tool: ToolSpec) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters)}


def to_cookbook_messages(renderer: Any, conversation: Conversation | Sequence[Message]) -> list[dict[str, Any]]:
    """Messages for a cookbook renderer; tools go through its create_conversation_prefix_with_tools."""
    if isinstance(conversation, Conversation):
        messages, tools = list(conversation.messages), conversation.tools
    else:
        messages, tools = list(conversation), ()
    converted = [to_cookbook_message(message) for message in messages]
    if tools:
        system_prompt = ""
        trainable = None
        if messages and messages[0].role == "system":
            first = converted.pop(0)
            system_prompt = (
                first["content"]
                if isinstance(first["content"], str)
                else "".join(part["text"] for part in first["content"] if part["type"] == "text")
            )
            trainable = first.get("trainable")
        prefix = renderer.create_conversation_prefix_with_tools([tool_spec_dict(t) for t in tools], system_prompt)
        customized = any("trainable" in message for message in converted) or trainable is not None
        for message in prefix:
            if customized:
                message["trainable"] = bool(trainable) if message["role"] in ("system", "developer") else False
        converted = [*prefix, *converted]
    return converted


def cookbook_renderer(name: str, tokenizer_name: str, **kwargs: Any) -> Any:
    from tinker_cookbook.renderers import get_renderer

    return get_renderer(name, hf_tokenizer(tokenizer_name), **kwargs)


def model_input_tokens(model_input: Any) -> list[int]:
    tokens: list[int] = []
    for chunk in model_input.chunks:
        tokens.extend(chunk.tokens)
    return tokens


def layout(model_input: Any) -> list[int]:
    """Token ids, each image written as -(its number of positions) (image bytes are not compared)."""
    result: list[int] = []
    for chunk in model_input.chunks:
        tokens = getattr(chunk, "tokens", None)
        if tokens is None:
            tokens = getattr(chunk, "tokens_T", None)
        if tokens is None:
            result.append(-int(chunk.expected_tokens))
        else:
            result.extend(int(t) for t in tokens)
    return result


@functools.cache
def qwen3_vl_image_processor() -> Any:
    """Qwen3-VL's image processor configuration (transformers' Qwen2-VL processor, PIL backend)."""
    import warnings

    from transformers import Qwen2VLImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLImageProcessor(
            patch_size=16, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 65536, "longest_edge": 16777216}
        )


def cookbook_example(renderer: Any, conversation: Conversation, train_on: TrainOnWhat) -> tuple[list[int], np.ndarray]:
    from tinker_cookbook.renderers import TrainOnWhat as CookbookTrainOnWhat

    model_input, weights = renderer.build_supervised_example(
        to_cookbook_messages(renderer, conversation), train_on_what=CookbookTrainOnWhat(train_on.value)
    )
    return layout(model_input), weights.numpy().astype(np.float32)
