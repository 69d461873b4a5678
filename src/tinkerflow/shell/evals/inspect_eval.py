"""Inspect AI: tinkerflow samplers as an Inspect model provider, Inspect tasks as evaluations. (Shell.)

(Being written; see docs/evals.md.)
"""

from __future__ import annotations

from tinkerflow.evals import EvalSpec
from tinkerflow.render import Renderer
from tinkerflow.shell.backends.protocol import SamplingClient
from tinkerflow.shell.evals.runner import EvalRun

__all__ = ["run_inspect_task"]


def run_inspect_task(spec: EvalSpec, sampler: SamplingClient, renderer: Renderer, *, seed: int = 0) -> EvalRun:
    """Run the Inspect task ``spec.task`` against ``sampler``; its first score's mean is the result."""
    raise NotImplementedError("inspect evaluations are not wired yet")
