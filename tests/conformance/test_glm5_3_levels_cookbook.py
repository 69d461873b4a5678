"""Token-exact conformance of ``glm5_3_low_reasoning`` with tinker-cookbook 0.6.1 on 1,000 generated conversations
(tokenizer: the GLM-5.3 test vocabulary, see ``test_glm5_3_cookbook.py``), and the effort segment of each level."""

from __future__ import annotations

import pytest

from tinkerflow.chat import Message
from tinkerflow.render import build_generation_prompt

from ._v061 import check_family
from .test_glm5_3_cookbook import glm_profile, pair

pytestmark = pytest.mark.conformance


def test_matches_cookbook() -> None:
    assert check_family(*pair("glm5_3_low_reasoning"), glm_profile()) >= 1000


@pytest.mark.parametrize(
    ("name", "effort"),
    [("glm5_3_max_reasoning", "Max"), ("glm5_3_high_reasoning", "High"), ("glm5_3_low_reasoning", "Low")],
)
def test_effort_segment_opens_every_prompt(name: str, effort: str) -> None:
    renderer, _ = pair(name)
    prompt = build_generation_prompt(renderer, [Message(role="user", content="hi")]).to_tokens().tolist()
    text = renderer.tokenizer.decode(prompt)
    assert text == f"[gMASK]<sop><|system|>Reasoning Effort: {effort}<|user|>hi<|assistant|><think>"
