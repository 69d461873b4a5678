"""Evaluations, the pure half: records, scorers, the config record and data parsing. (Core.)

* :mod:`.records`: :class:`EvalExample` (what is asked), :class:`ScoredSample` (answered and graded),
  :class:`EvalResult` (mean, standard error, per-example scores);
* :mod:`.scoring`: exact match, regex, JSON (schema and value), boxed math, multiple choice by logprob and the
  pairwise judge's verdicts;
* :mod:`.spec`: :class:`EvalSpec`, the ``evals`` entries of SL / RL / DPO configs and of ``tinkerflow eval``;
* :mod:`.data`: JSON rows and held-out conversations -> examples.

The effectful half (sampling answers with any sampling client, inline evaluation in the loops, benchmarks over RL
environments, Inspect AI) is :mod:`tinkerflow.shell.evals`. See docs/evals.md.
"""

from tinkerflow.evals.data import examples_from_conversations, examples_from_rows
from tinkerflow.evals.records import EvalExample, EvalResult, EvalRun, ScoredSample, mean_and_stderr, summarize
from tinkerflow.evals.spec import GENERATION_KINDS, EvalKind, EvalSpec, check_unique_names

__all__ = [
    "GENERATION_KINDS",
    "EvalExample",
    "EvalKind",
    "EvalResult",
    "EvalRun",
    "EvalSpec",
    "ScoredSample",
    "check_unique_names",
    "examples_from_conversations",
    "examples_from_rows",
    "mean_and_stderr",
    "summarize",
]
