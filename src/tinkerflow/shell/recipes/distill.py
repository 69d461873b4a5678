"""Prompt distillation (shell): a teacher answers with a long system prompt; the student learns to answer the
same way without it.

1. :func:`teacher_conversations` samples the teacher (``base_model`` + ``system_prompt``) on each user prompt
   and returns student training conversations *without* the system prompt (pure assembly:
   :func:`student_conversation`).
2. Write them with :func:`write_chat_jsonl` and train with the ordinary SL loop (``tinkerflow sl``), which
   then learns the behaviour the system prompt produced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from tinkerflow.chat import Conversation, Message
from tinkerflow.chat_format import conversation_to_json
from tinkerflow.render import Renderer, build_generation_prompt, parse_response
from tinkerflow.sampling import SamplingParams
from tinkerflow.shell.backends.protocol import SamplingClient
from tinkerflow.shell.io.run_dir import atomic_write_text

__all__ = ["student_conversation", "teacher_conversations", "write_chat_jsonl"]


def student_conversation(user_prompt: str, teacher_answer: Message) -> Conversation:
    """The student's training example: the user prompt and the teacher's answer, no system prompt. Pure."""
    answer = Message(role="assistant", content=teacher_answer.content, tool_calls=teacher_answer.tool_calls)
    return Conversation(messages=(Message(role="user", content=user_prompt), answer))


def teacher_conversations(
    sampler: SamplingClient,
    renderer: Renderer,
    system_prompt: str,
    user_prompts: Sequence[str],
    *,
    max_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Conversation]:
    """Sample the teacher on every prompt (all requests submitted before any is awaited) and assemble the
    student's conversations, in prompt order."""
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, stop_tokens=renderer.stop_sequences().tokens, seed=seed
    )
    futures = []
    for prompt in user_prompts:
        teacher_view = Conversation(
            messages=(Message(role="system", content=system_prompt), Message(role="user", content=prompt))
        )
        futures.append(sampler.sample(build_generation_prompt(renderer, teacher_view), 1, params))
    return [
        student_conversation(prompt, parse_response(renderer, future.result().sequences[0].tokens_T).message)
        for prompt, future in zip(user_prompts, futures, strict=True)
    ]


def write_chat_jsonl(path: str | os.PathLike[str], conversations: Sequence[Conversation]) -> None:
    """Write conversations as JSONL in the common chat format, atomically."""
    lines = [
        json.dumps(conversation_to_json(conversation), ensure_ascii=False) + "\n" for conversation in conversations
    ]
    atomic_write_text(path, "".join(lines))
