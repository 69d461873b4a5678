"""``vllm/inputs/llm.py`` of 0.33.0: ``TokensPrompt`` is a TypedDict."""

from typing import NotRequired, TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]
