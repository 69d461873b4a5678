"""Token-exact conformance of ``gpt_oss_low_reasoning`` and ``gpt_oss_high_reasoning`` with tinker-cookbook 0.6.1
(``gpt_oss_no_sysprompt`` and ``gpt_oss_medium_reasoning`` are in ``test_cookbook_conformance.py``), on 1,000
generated conversations each, with the Harmony vocabulary (``o200k_base`` + the Harmony special tokens, from
tml-renderers) and the date pinned on both sides."""

from __future__ import annotations

import pytest

from tinkerflow.render import get_renderer
from tinkerflow.shell.io.tokenizers import offline_tokenizer

from ._compare import DATE, _added, _gpt_oss_cookbook
from ._strategies import Profile
from ._v061 import check_family

pytestmark = pytest.mark.conformance

HARMONY = Profile(
    roles=("system",),
    thinking=True,
    tools=True,
    text_ok=_added("gpt_oss"),
    max_calls=1,
    single_text_roles=("system", "user", "tool"),
)


@pytest.mark.parametrize("effort", ["low", "high"])
def test_matches_cookbook(effort: str) -> None:
    renderer = get_renderer(f"gpt_oss_{effort}_reasoning", offline_tokenizer("gpt_oss"), current_date=DATE)
    reference = _gpt_oss_cookbook(effort)()
    # the cookbook's customized mode is not compared for the effort variants (as for medium): see _compare.families
    assert check_family(renderer, reference, HARMONY, customized=False) >= 1000
