"""Shared bits of the cookbook run scripts (run in a subprocess by ``tests/serve/test_cookbook.py``).

The environment must already hold ``TINKER_BASE_URL``, ``TINKER_API_KEY``, ``TINKER_TELEMETRY=0``, ``HF_HOME`` and
``HF_HUB_OFFLINE=1``: huggingface_hub reads the last two once, when it is imported.
"""

from __future__ import annotations

import argparse


def skip_pricing_download() -> None:
    """The SL and RL entry points fetch a model price list from the internet once per process; mark it fetched.

    This sets a module flag of the unmodified cookbook (``tinker_cookbook.utils.cost_estimation``); no cookbook file
    changes.
    """
    import tinker_cookbook.utils.cost_estimation as cost_estimation

    cost_estimation._pricing_fetched = True  # the documented way round the offline fetch


def parser(doc: str | None) -> argparse.ArgumentParser:
    """Options every run script takes."""
    parse = argparse.ArgumentParser(description=doc)
    parse.add_argument("--log-path", required=True, help="the cookbook's log folder (must be new or empty)")
    parse.add_argument("--model", default="tiny-llama", help="served model name (no ':')")
    parse.add_argument("--renderer", default="role_colon", help="cookbook renderer name")
    parse.add_argument("--lora-rank", type=int, default=8)
    parse.add_argument("--learning-rate", type=float, required=True)
    parse.add_argument("--save-every", type=int, default=0, help="periodic checkpoint every N steps (0: off)")
    return parse
