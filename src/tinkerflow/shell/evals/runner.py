"""The effectful half of an evaluation: sample answers with any sampling client, grade them with the pure
scorers, summarize, write the transcript. (Shell.)

:func:`evaluate` runs one :class:`~tinkerflow.evals.EvalSpec` over its examples with a
:class:`~tinkerflow.shell.backends.protocol.SamplingClient`: the local backend's, one served by ``tinkerflow
serve`` or the Tinker service's (through :class:`~tinkerflow.shell.backends.tinker.TinkerBackend`). Per kind:

* generation kinds (``exact_match``, ``regex``, ``json_match``, ``boxed_math``, ``judge``): each prompt rendered as
  a generation prompt, one answer sampled (``max_tokens``, ``temperature``, the renderer's stop sequences, the
  given ``seed`` for every request, so a rerun is the same), parsed as the renderer parses an assistant turn;
* ``multiple_choice``: the logprobs of each choice's tokens after the generation prompt (``compute_logprobs``),
  no sampling;
* ``nll``: the logprobs of the whole conversation, weighted on its last assistant message;
* ``judge``: the answer and the reference shown to a judge (another sampling client) twice, swapped;
* ``inspect``: delegated to the ``inspect`` runner given (:mod:`tinkerflow.shell.evals.inspect_eval`).

Requests are submitted ``concurrency`` at a time (the clients queue them; the local sampler batches nothing, the
served and Tinker ones overlap network round trips).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeAlias, TypeVar

import attrs
import numpy as np

from tinkerflow.chat import Message
from tinkerflow.chat_format import ChatFormatError, decode_json_line
from tinkerflow.errors import ConfigError
from tinkerflow.evals import EvalExample, EvalRun, EvalSpec, ScoredSample, scoring, summarize
from tinkerflow.evals.data import examples_from_rows
from tinkerflow.model_input import ModelInput
from tinkerflow.render import Renderer, TrainOnWhat, build_generation_prompt, build_supervised_example
from tinkerflow.rl.envs.base import parse_tokens
from tinkerflow.sampling import SampleResponse, SamplingParams
from tinkerflow.serde import to_json
from tinkerflow.shell.backends.protocol import APIFuture, SamplingClient
from tinkerflow.shell.io.run_dir import atomic_write_text

#: Runs an ``inspect`` evaluation: ``runner(spec, sampler, renderer, seed)``.
InspectRunner: TypeAlias = Callable[[EvalSpec, SamplingClient, Renderer, int], EvalRun]

__all__ = [
    "EvalRun",
    "InspectRunner",
    "Judge",
    "evaluate",
    "inspect_runner",
    "load_examples",
    "load_schema",
    "write_transcript",
]

T = TypeVar("T")
U = TypeVar("U")


@attrs.frozen
class Judge:
    """The judge of ``judge`` evaluations: a sampling client and the renderer of its model."""

    sampler: SamplingClient
    renderer: Renderer
    max_tokens: int = 8


def load_examples(spec: EvalSpec, base: pathlib.Path | None = None) -> tuple[EvalExample, ...]:
    """The examples of ``spec.data`` (a JSONL file, relative to ``base`` when given and relative), ``limit``
    applied. Bad rows raise :class:`~tinkerflow.chat_format.ChatFormatError` naming ``file:line``."""
    if spec.data is None:
        raise ConfigError(
            f"EvalSpec[{spec.name!r}]", "data", "is null, which means the run's held-out data; there is none here.",
            "give a JSONL file.",
        )  # fmt: skip
    path = pathlib.Path(spec.data)
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    if not path.is_file():
        raise ConfigError(f"EvalSpec[{spec.name!r}]", "data", f"{spec.data!r} is not a file.", "give a JSONL file.")
    rows: list[tuple[str, object]] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                where = f"{path.name}:{number}"
                rows.append((where, decode_json_line(line, where)))
            if spec.limit is not None and len(rows) >= spec.limit:
                break
    if not rows:
        raise ChatFormatError(str(path), "rows", "the file holds no examples.")
    return examples_from_rows(rows, spec)


def load_schema(spec: EvalSpec, base: pathlib.Path | None = None) -> Mapping[str, object] | None:
    """The JSON schema of a ``json_match`` evaluation (``None`` when it has none), checked to be a valid schema."""
    if spec.schema is None:
        return None
    path = pathlib.Path(spec.schema)
    if base is not None and not path.is_absolute() and not path.exists():
        path = base / path
    where = f"EvalSpec[{spec.name!r}]"
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            where, "schema", f"cannot read {spec.schema!r}: {error}.", "give a JSON-schema file."
        ) from error
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ConfigError(where, "schema", f"{spec.schema!r} is not a valid JSON schema: {error.message}.") from error
    if not isinstance(schema, dict):
        raise ConfigError(where, "schema", f"{spec.schema!r} must hold a JSON object.")
    return schema


def _windowed(items: Sequence[T], submit: Callable[[T], APIFuture[U]], concurrency: int) -> Iterator[U]:
    """Each item's result in order, with at most ``concurrency`` requests in flight."""
    pending: list[APIFuture[U]] = []
    next_index = 0
    for _ in range(len(items)):
        while next_index < len(items) and len(pending) < concurrency:
            pending.append(submit(items[next_index]))
            next_index += 1
        yield pending.pop(0).result()


def _params(spec: EvalSpec, renderer: Renderer, seed: int, max_tokens: int | None = None) -> SamplingParams:
    stops = renderer.stop_sequences()
    return SamplingParams(
        max_tokens=max_tokens or spec.max_tokens,
        temperature=spec.temperature,
        stop_tokens=stops.tokens,
        stop_strings=stops.strings,
        seed=seed,
    )


def _answer(renderer: Renderer, response: SampleResponse) -> tuple[str, str]:
    """The visible text of the first sampled answer, and a log line when it did not end cleanly."""
    message, termination = parse_tokens(renderer, response.sequences[0].tokens_T)
    return message.text(), "" if termination.is_clean else f"answer ended {termination.value}"


def _answers(
    spec: EvalSpec, examples: Sequence[EvalExample], sampler: SamplingClient, renderer: Renderer, seed: int,
    concurrency: int,
) -> list[tuple[str, str]]:  # fmt: skip
    params = _params(spec, renderer, seed)

    def submit(example: EvalExample) -> APIFuture[SampleResponse]:
        return sampler.sample(build_generation_prompt(renderer, example.messages), 1, params)

    return [_answer(renderer, response) for response in _windowed(examples, submit, concurrency)]


def _grade(
    spec: EvalSpec, example: EvalExample, text: str, schema: Mapping[str, object] | None
) -> tuple[float, dict[str, float]]:
    if spec.kind == "exact_match":
        return scoring.exact_match(text, example.reference, normalize=spec.normalize)
    if spec.kind == "regex":
        return scoring.regex_score(text, re.compile(spec.pattern or ""), example.reference, normalize=spec.normalize)
    if spec.kind == "json_match":
        return scoring.json_score(text, example.reference, schema)
    if spec.kind == "boxed_math":
        return scoring.boxed_math_score(text, example.reference)
    raise ConfigError(f"EvalSpec[{spec.name!r}]", "kind", f"{spec.kind!r} is not graded from text.")


def _sample_row(example: EvalExample, text: str, score: float, details: Mapping[str, float], log: str) -> ScoredSample:
    return ScoredSample(
        example.id, example.question, text, example.reference, score, details, {"termination": log} if log else {}
    )


def _generated(
    spec: EvalSpec, examples: Sequence[EvalExample], sampler: SamplingClient, renderer: Renderer, seed: int,
    concurrency: int, schema: Mapping[str, object] | None,
) -> list[ScoredSample]:  # fmt: skip
    answers = _answers(spec, examples, sampler, renderer, seed, concurrency)
    samples = []
    for example, (text, log) in zip(examples, answers, strict=True):
        score, details = _grade(spec, example, text, schema)
        samples.append(_sample_row(example, text, score, details, log))
    return samples


def _choice_tokens(renderer: Renderer, choice: str) -> np.ndarray:
    tokens = np.asarray(renderer.tokenizer.encode(choice), dtype=np.int64)
    if tokens.size == 0:
        raise ConfigError("multiple_choice", "choices", f"choice {choice!r} encodes to no tokens.")
    return tokens


def _multiple_choice(
    spec: EvalSpec, examples: Sequence[EvalExample], sampler: SamplingClient, renderer: Renderer, concurrency: int
) -> list[ScoredSample]:
    requests: list[tuple[int, int, ModelInput, int]] = []  # (example, choice, tokens, choice length)
    for index, example in enumerate(examples):
        prompt = build_generation_prompt(renderer, example.messages)
        for choice_index, choice in enumerate(example.choices):
            tokens = _choice_tokens(renderer, choice)
            requests.append((index, choice_index, prompt.append_tokens(tokens), int(tokens.size)))
    logprobs = list(_windowed(requests, lambda request: sampler.compute_logprobs(request[2]), concurrency))
    sums: dict[int, list[float]] = {}
    lengths: dict[int, list[int]] = {}
    for (index, _, _, length), values in zip(requests, logprobs, strict=True):
        sums.setdefault(index, []).append(float(np.sum(np.asarray(values, dtype=np.float64)[-length:])))
        lengths.setdefault(index, []).append(length)
    samples = []
    for index, example in enumerate(examples):
        sums_C = np.array(sums[index])
        lengths_C = np.array(lengths[index], dtype=np.int64)
        chosen = scoring.choose_by_logprob(sums_C, lengths_C, spec.choice_norm)
        right = example.answer if example.answer is not None else -1
        scores_C = scoring.choice_scores(sums_C, lengths_C, spec.choice_norm)
        details = {"margin": float(scores_C[right] - np.max(np.delete(scores_C, right)))}
        samples.append(
            ScoredSample(
                example.id, example.question, example.choices[chosen], example.choices[right],
                float(chosen == right), details,
            )
        )  # fmt: skip
    return samples


def _nll(
    examples: Sequence[EvalExample], sampler: SamplingClient, renderer: Renderer, concurrency: int
) -> list[ScoredSample]:
    rendered = [
        build_supervised_example(renderer, example.messages, TrainOnWhat.LAST_ASSISTANT_MESSAGE) for example in examples
    ]
    logprobs = list(_windowed(rendered, lambda item: sampler.compute_logprobs(item.model_input), concurrency))
    samples = []
    for example, item, values in zip(examples, rendered, logprobs, strict=True):
        weights = np.asarray(item.weights_T, dtype=np.float64)[1:]
        lp = np.asarray(values, dtype=np.float64)[1:]
        total = float(weights.sum())
        nll = float(-(lp * weights).sum() / total) if total else math.nan
        samples.append(
            ScoredSample(example.id, example.question, "", example.messages[-1].text(), nll, {"tokens": total})
        )
    return samples


def _judged(
    spec: EvalSpec, examples: Sequence[EvalExample], sampler: SamplingClient, renderer: Renderer, seed: int,
    concurrency: int, judge: Judge | None,
) -> list[ScoredSample]:  # fmt: skip
    if judge is None:
        raise ConfigError(f"EvalSpec[{spec.name!r}]", "judge_model", "kind 'judge' needs a judge; none was given.")
    answers = _answers(spec, examples, sampler, renderer, seed, concurrency)
    params = _params(spec, judge.renderer, seed, judge.max_tokens)
    prompts = []
    for example, (text, _) in zip(examples, answers, strict=True):
        prompts.append(scoring.judge_messages(example.question, text, example.reference))
        prompts.append(scoring.judge_messages(example.question, example.reference, text))

    def submit(messages: tuple[Message, ...]) -> APIFuture[SampleResponse]:
        return judge.sampler.sample(build_generation_prompt(judge.renderer, messages), 1, params)

    verdicts = [_answer(judge.renderer, response)[0] for response in _windowed(prompts, submit, concurrency)]
    samples = []
    for index, (example, (text, log)) in enumerate(zip(examples, answers, strict=True)):
        first, second = verdicts[2 * index], verdicts[2 * index + 1]
        score, details = scoring.pairwise_score(scoring.parse_verdict(first), scoring.parse_verdict(second))
        logs = {"verdict_model_first": first, "verdict_model_second": second}
        if log:
            logs["termination"] = log
        samples.append(ScoredSample(example.id, example.question, text, example.reference, score, details, logs))
    return samples


def inspect_runner(specs: Sequence[EvalSpec]) -> InspectRunner | None:
    """The runner of ``inspect`` evaluations (importing Inspect AI) when ``specs`` hold one, else ``None``."""
    if not any(spec.kind == "inspect" for spec in specs):
        return None
    from tinkerflow.shell.evals import inspect_run  # Inspect AI is imported only when a task is run

    def run(spec: EvalSpec, sampler: SamplingClient, renderer: Renderer, seed: int) -> EvalRun:
        return inspect_run.run_inspect_task(spec, sampler, renderer, seed=seed)

    return run


def evaluate(
    spec: EvalSpec,
    examples: Sequence[EvalExample],
    sampler: SamplingClient,
    renderer: Renderer,
    *,
    seed: int = 0,
    concurrency: int = 8,
    schema: Mapping[str, object] | None = None,
    judge: Judge | None = None,
    inspect: InspectRunner | None = None,
) -> EvalRun:
    """Run ``spec`` over ``examples`` with ``sampler`` (see the module docstring) and summarize it.

        ``schema`` is the loaded JSON schema of a ``json_match`` spec (:func:`load_schema`); ``judge`` the judge of a
        ``judge`` spec; ``inspect`` runs an ``inspect`` spec (:func:`inspect_runner`: it imports Inspect AI, so it is
    passed in and this module does not import it).
    """
    if spec.kind == "inspect":
        if inspect is None:
            raise ConfigError(
                f"EvalSpec[{spec.name!r}]", "kind", "an inspect evaluation needs its runner.",
                "pass inspect=inspect_runner([spec]).",
            )  # fmt: skip
        return inspect(spec, sampler, renderer, seed)
    if not examples:
        raise ConfigError(f"EvalSpec[{spec.name!r}]", "data", "holds no examples.")
    if spec.kind == "multiple_choice":
        samples = _multiple_choice(spec, examples, sampler, renderer, concurrency)
    elif spec.kind == "nll":
        samples = _nll(examples, sampler, renderer, concurrency)
    elif spec.kind == "judge":
        samples = _judged(spec, examples, sampler, renderer, seed, concurrency, judge)
    else:
        samples = _generated(spec, examples, sampler, renderer, seed, concurrency, schema)
    return EvalRun(summarize(spec.name, spec.kind, samples), tuple(samples))


def write_transcript(path: str | pathlib.Path, run: EvalRun, *, step: int | None = None) -> None:
    """Write the graded samples as JSONL (one :class:`ScoredSample` per line, with ``step`` when given),
    atomically."""
    lines = []
    for sample in run.samples:
        row = json.loads(to_json(sample))
        if step is not None:
            row = {"step": step, **row}
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
