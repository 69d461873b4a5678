"""Inspect AI integration: the ``tinkerflow`` model provider, the bundled ``tinkerflow/arithmetic`` task, and
``kind="inspect"`` evaluations.

The claim under test: an Inspect run of the bundled task and tinkerflow's own evaluator (a ``regex`` spec over the
same items) send the sampler the same requests and grade its answers alike, sample by sample, whatever the
answers are. Shown on

* Inspect's scorer against tinkerflow's on arbitrary answers (a hypothesis property);
* a scripted sampler that answers right for some items and wrong, padded or cut off for others (so the equality
  is not all zeros), with the requests both sides sent compared;
* the tiny local model named on Inspect's side (``tinkerflow/tiny-llama``), greedy and sampled with a seed, in this
  process and through the ``inspect eval`` command line;
* ``evaluate`` of an ``EvalSpec(kind="inspect")``.

Also: the samplers a model name designates (``local://``, checkpoint folder, run directory, ``tinker://`` on a
``tinkerflow serve`` server), generation settings, tool calls (qwen3 renderer), refusals and failures.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import attrs
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

pytest.importorskip("inspect_ai")
torch = pytest.importorskip("torch")

import inspect_ai  # noqa: E402  (after the importorskips)
from inspect_ai import Task  # noqa: E402
from inspect_ai.dataset import Sample  # noqa: E402
from inspect_ai.log import EvalLog, read_eval_log  # noqa: E402
from inspect_ai.model import (  # noqa: E402
    ChatMessageUser,
    ContentImage,
    ContentText,
    GenerateConfig,
    ModelName,
    ModelOutput,
    get_model,
)
from inspect_ai.scorer import Target, match, pattern  # noqa: E402
from inspect_ai.solver import TaskState, generate, use_tools  # noqa: E402
from inspect_ai.tool import tool  # noqa: E402
from tests.helpers import cached_tokenizer  # noqa: E402
from tests.tiny_model import TINY_RENDERER  # noqa: E402

from tinkerflow.chat import Message, ToolCall  # noqa: E402
from tinkerflow.errors import ConfigError  # noqa: E402
from tinkerflow.evals import EvalExample, EvalSpec, ScoredSample, scoring  # noqa: E402
from tinkerflow.model_input import ModelInput  # noqa: E402
from tinkerflow.render import Renderer, build_supervised_example, get_renderer  # noqa: E402
from tinkerflow.sampling import SampledSequence, SampleResponse, SamplingParams  # noqa: E402
from tinkerflow.shell.backends.local.backend import LocalBackend  # noqa: E402
from tinkerflow.shell.backends.local.sampling import LocalSamplingClient  # noqa: E402
from tinkerflow.shell.backends.protocol import APIFuture  # noqa: E402
from tinkerflow.shell.evals import inspect_eval  # noqa: E402
from tinkerflow.shell.evals.inspect_eval import (  # noqa: E402
    inspect_messages_to_tinkerflow,
    open_sampler,
    registered_sampler,
)
from tinkerflow.shell.evals.inspect_run import run_inspect_task, scored_samples  # noqa: E402
from tinkerflow.shell.evals.inspect_tasks import (  # noqa: E402
    ARITHMETIC_PATTERN,
    arithmetic,
    arithmetic_examples,
    arithmetic_items,
    arithmetic_spec,
)
from tinkerflow.shell.evals.runner import EvalRun, evaluate, inspect_runner  # noqa: E402
from tinkerflow.shell.io.run_dir import RunState, write_state  # noqa: E402
from tinkerflow.supervised import supervised_datum  # noqa: E402
from tinkerflow.training import AdamParams  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread", "quiet_inspect"),
    pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning"),  # Inspect's own
]

ENTRY_POINT = "tinkerflow.shell.evals._inspect_registry"
ENTRY_POINT_INSTALLED = any(
    entry.name == "tinkerflow" and entry.value == ENTRY_POINT
    for entry in importlib.metadata.entry_points(group="inspect_ai")
)


@pytest.fixture(scope="module")
def quiet_inspect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """Inspect's files (traces, logs) in a temporary folder, no control-channel server, no SDK telemetry."""
    home = tmp_path_factory.mktemp("inspect-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home / "data"))
        patch.setenv("INSPECT_LOG_DIR", str(home / "logs"))
        patch.setenv("INSPECT_EVAL_CTL_SERVER", "false")
        patch.setenv("TINKER_TELEMETRY", "0")
        yield home


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    with LocalBackend(checkpoint_dir=tmp_path_factory.mktemp("checkpoints"), device="cpu") as local:
        yield local


@pytest.fixture(scope="module")
def tiny(backend: LocalBackend) -> tuple[LocalSamplingClient, Renderer]:
    """The tiny model's sampler and the renderer a ``-M renderer=role_colon`` model builds for it."""
    sampler = backend.create_sampling_client(base_model="tiny-llama").result()
    return sampler, get_renderer("role_colon", backend.get_tokenizer("tiny-llama"))


def _eval(task: str | Task, model: object, log_dir: pathlib.Path, **options: object) -> EvalLog:
    logs = inspect_ai.eval(task, model=model, log_dir=str(log_dir), display="none", ctl_server=False, **options)  # type: ignore[arg-type]  # Inspect's many keyword arguments
    assert len(logs) == 1
    assert logs[0].status == "success", logs[0].error
    return logs[0]


def _rows(samples: list[ScoredSample] | tuple[ScoredSample, ...]) -> dict[str, tuple[str, str, str, float]]:
    """What both sides must agree on, by sample id: the prompt, the answer, the reference and the score."""
    return {sample.id: (sample.prompt, sample.response, sample.reference, sample.score) for sample in samples}


# -- a sampler whose answers are scripted ----------------------------------------------------------------------------


def answer_tokens(renderer: Renderer, answer: Message, *, stopped: bool = True) -> np.ndarray:
    """The tokens a model samples to write ``answer`` (ending with the renderer's stop sequence when ``stopped``)."""
    if not stopped:
        return np.asarray(renderer.tokenizer.encode(" " + answer.text()), dtype=np.int64)
    example = build_supervised_example(renderer, (Message(role="user", content="?"), answer))
    return example.model_input.to_tokens()[example.weights_T > 0]


@attrs.define
class ScriptedSampler:
    """A :class:`~tinkerflow.shell.backends.protocol.SamplingClient` that answers by script: ``reply(prompt text)``
    gives the answer and whether it ended with the stop sequence. Records every request."""

    renderer: Renderer
    reply: Callable[[str], tuple[Message, bool]]
    requests: list[tuple[tuple[int, ...], int, SamplingParams]] = attrs.field(factory=list)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> APIFuture[SampleResponse]:
        tokens = prompt.to_tokens()
        with self._lock:
            self.requests.append((tuple(int(token) for token in tokens), num_samples, sampling_params))
        answer, stopped = self.reply(self.renderer.tokenizer.decode(tokens))
        sampled = answer_tokens(self.renderer, answer, stopped=stopped)
        sequence = SampledSequence(
            sampled, "stop" if stopped else "length", logprobs_T=np.full(sampled.shape[0], -0.25, np.float32)
        )
        return APIFuture.completed(SampleResponse([sequence] * num_samples))

    def compute_logprobs(self, prompt: ModelInput) -> APIFuture[np.ndarray]:
        raise NotImplementedError

    def get_tokenizer(self) -> object:
        return self.renderer.tokenizer

    def get_base_model(self) -> str:
        return "scripted"


_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
#: How the scripted sampler writes the sum s of a question, by (a + 2b) mod 8: right, right with padding, right then
#: more text, off by one, with a leading zero, chatty, empty, and cut off before the stop sequence (right).
_STYLES: list[tuple[Callable[[int], str], bool]] = [
    (lambda s: str(s), True),
    (lambda s: f"  {s}.", True),
    (lambda s: f"{s} is the sum", True),
    (lambda s: str(s + 1), True),
    (lambda s: f"0{s}", True),
    (lambda s: f"The answer is {s}", True),
    (lambda s: "", True),
    (lambda s: f"{s}{s}{s}", False),
]


def arithmetic_reply(prompt: str) -> tuple[Message, bool]:
    found = _QUESTION.findall(prompt)
    assert found, prompt
    a, b = (int(value) for value in found[-1])
    write, stopped = _STYLES[(a + 2 * b) % len(_STYLES)]
    return Message(role="assistant", content=write(a + b)), stopped


# -- the scorer ------------------------------------------------------------------------------------------------------

_PADS = st.sampled_from(["", " ", "\n", " \t", "0", "-", "+", "x"])
_TAILS = st.sampled_from(["", ".", " apples", "\n\nUser:", "0", "5", ",000", "-1"])


@st.composite
def answers_and_references(draw: st.DrawFn) -> tuple[str, str]:
    """A reference number and an answer: any text, the reference itself or another number, padded at either end."""
    reference = draw(st.integers(-20, 200))
    number = draw(st.one_of(st.just(reference), st.integers(-99, 999)))
    answer = draw(
        st.one_of(
            st.text(max_size=12),
            st.from_regex(r"[\s\S]{0,3}-?\d{1,3}[\s\S]{0,4}", fullmatch=True),
            st.builds(lambda pad, tail: f"{pad}{number}{tail}", _PADS, _TAILS),
        )
    )
    return answer, str(reference)


@given(answers_and_references())
@example((" 7", "7"))
@example(("\n7.", "7"))
@example(("7 apples", "7"))
@example(("07", "7"))
@example(("-7", "7"))
@example(("", "0"))
def test_inspect_pattern_scorer_grades_as_the_regex_spec(case: tuple[str, str]) -> None:
    """Inspect's ``pattern`` scorer of the task and the runner's ``regex`` grading of :func:`arithmetic_spec`
    agree on any answer."""
    answer, reference = case
    scorer = pattern(ARITHMETIC_PATTERN, ignore_case=False)
    state = TaskState(
        ModelName("tinkerflow/x"), "id", 0, "q", [], output=ModelOutput.from_content("tinkerflow/x", answer)
    )
    score = asyncio.run(scorer(state, Target(reference)))  # type: ignore[misc]  # Inspect types the scorer loosely
    spec = arithmetic_spec()
    ours, _ = scoring.regex_score(answer, re.compile(spec.pattern or ""), reference, normalize=spec.normalize)
    assert (score.value == "C") == (ours == 1.0)


# -- Inspect and the evaluator, side by side -------------------------------------------------------------------------


def test_scripted_answers_grade_alike_and_the_requests_are_the_same(tmp_path: pathlib.Path) -> None:
    sampler = ScriptedSampler(TINY_RENDERER, arithmetic_reply)
    examples = arithmetic_examples(16, seed=5)
    ours = evaluate(arithmetic_spec(max_tokens=12), examples, sampler, TINY_RENDERER, seed=7)
    ours_requests = list(sampler.requests)
    with registered_sampler(sampler, TINY_RENDERER, max_tokens=12, seed=7) as model:
        log = _eval(arithmetic(n=16, seed=5), model, tmp_path)
        theirs = scored_samples(log)
    assert _rows(theirs) == _rows(ours.samples)
    right = int(ours.result.scores_N.sum())
    assert 2 <= right <= 14  # right and wrong answers both occur: the agreement is not all zeros
    assert log.results is not None
    assert log.results.scores[0].metrics["accuracy"].value == pytest.approx(ours.result.mean)
    # Inspect sends its requests concurrently, in its own order: the same ones as a multiset
    inspect_requests = sampler.requests[len(ours_requests) :]
    assert collections.Counter(inspect_requests) == collections.Counter(ours_requests)
    assert len(ours_requests) == 16


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_named_tiny_model_answers_and_grades_as_the_evaluator(
    tmp_path: pathlib.Path, tiny: tuple[LocalSamplingClient, Renderer], temperature: float
) -> None:
    """``--model tinkerflow/tiny-llama -M renderer=role_colon`` in this process: its own backend, the same
    answers (sampled ones too: the seed reaches every request) and scores as ``evaluate``."""
    sampler, renderer = tiny
    log = _eval(
        "tinkerflow/arithmetic", "tinkerflow/tiny-llama", tmp_path / "logs",
        model_args={"renderer": "role_colon", "checkpoint_dir": str(tmp_path / "checkpoints")},
        task_args={"n": 4, "seed": 2}, max_tokens=6, temperature=temperature, seed=11,
    )  # fmt: skip
    ours = evaluate(
        arithmetic_spec(max_tokens=6, temperature=temperature), arithmetic_examples(4, seed=2), sampler, renderer,
        seed=11,
    )  # fmt: skip
    theirs = scored_samples(log)
    assert _rows(theirs) == _rows(ours.samples)
    assert [sample.output.usage.output_tokens for sample in log.samples or []] == [6] * 4  # type: ignore[union-attr]


def test_an_inspect_spec_runs_through_evaluate(tmp_path: pathlib.Path) -> None:
    """``evaluate(EvalSpec(kind="inspect"))`` with the runner's ``inspect_runner`` runs :func:`run_inspect_task`:
    the same samples (in the dataset's order) and mean as the ``regex`` spec over the same items and seed, with the
    spec's ``limit``; the sampler is released after."""
    sampler = ScriptedSampler(TINY_RENDERER, arithmetic_reply)
    spec = EvalSpec(name="arith", kind="inspect", task="tinkerflow/arithmetic", limit=12, max_tokens=12)
    run = evaluate(spec, (), sampler, TINY_RENDERER, seed=3, inspect=inspect_runner([spec]))
    ours = evaluate(arithmetic_spec(max_tokens=12), arithmetic_examples()[:12], sampler, TINY_RENDERER, seed=3)
    assert (run.result.name, run.result.kind, run.result.n) == ("arith", "inspect", 12)
    assert run.result.mean == pytest.approx(ours.result.mean)
    assert 0 < run.result.mean < 1
    assert _rows(run.samples) == _rows(ours.samples)
    assert [sample.id for sample in run.samples] == [f"add-{index}" for index in range(12)]  # the dataset's order
    np.testing.assert_array_equal(run.result.scores_N, ours.result.scores_N)
    assert not inspect_eval._live  # the run's model is gone
    # the log goes where asked, and an event loop in this thread does not stop it
    logs = tmp_path / "kept"

    async def inside_a_loop() -> EvalRun:
        return run_inspect_task(spec, sampler, TINY_RENDERER, seed=3, log_dir=logs)

    again = asyncio.run(inside_a_loop())
    assert _rows(again.samples) == _rows(run.samples)
    assert len(list(logs.glob("*.eval"))) == 1


def test_the_inspect_command_line_runs_the_bundled_task_on_the_local_model(
    tmp_path: pathlib.Path, tiny: tuple[LocalSamplingClient, Renderer], quiet_inspect: pathlib.Path
) -> None:
    """``inspect eval tinkerflow/arithmetic --model tinkerflow/tiny-llama -M renderer=role_colon``: Inspect finds
    the provider and the task through the package's entry point, and
    its log holds the answers and scores of tinkerflow's evaluator with the same items and seed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert ENTRY_POINT_INSTALLED, "the package's inspect_ai entry point is not installed: pip install -e ."
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "inspect_ai", "eval", "tinkerflow/arithmetic", "-T", "n=3", "-T", "seed=4",
        "--model", "tinkerflow/tiny-llama", "-M", "renderer=role_colon", "-M", f"checkpoint_dir={tmp_path / 'ck'}",
        "--max-tokens", "5", "--seed", "9", "--log-dir", str(logs), "--display", "none",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (log_file,) = logs.glob("*.eval")
    log = read_eval_log(str(log_file))
    assert log.status == "success"
    assert log.eval.model == "tinkerflow/tiny-llama"
    sampler, renderer = tiny
    ours = evaluate(arithmetic_spec(max_tokens=5), arithmetic_examples(3, seed=4), sampler, renderer, seed=9)
    assert _rows(scored_samples(log)) == _rows(ours.samples)


def test_the_entry_point_is_installed() -> None:
    (entry,) = [entry for entry in importlib.metadata.entry_points(group="inspect_ai") if entry.name == "tinkerflow"]
    module = entry.load()
    assert module.TinkerflowModelAPI is inspect_eval.TinkerflowModelAPI


# -- what a model name designates ------------------------------------------------------------------------------------


def _probe(sampler: object) -> list[int]:
    """A short greedy continuation of a fixed prompt: tells samplers of different weights apart."""
    prompt = ModelInput.from_tokens([256, *b"User: hi\n\nAssistant:"])
    future = sampler.sample(prompt, 1, SamplingParams(max_tokens=6, temperature=0.0))  # type: ignore[attr-defined]
    return [int(token) for token in future.result().sequences[0].tokens_T]


@pytest.fixture(scope="module")
def trained(backend: LocalBackend) -> tuple[str, str]:
    """One training step of the tiny model, saved as sampler weights and as a state: their ``local://`` paths."""
    client = backend.create_lora_training_client("tiny-llama", rank=4, seed=0).result()
    example = build_supervised_example(
        TINY_RENDERER, (Message(role="user", content="hi"), Message(role="assistant", content="zzzz"))
    )
    client.forward_backward([supervised_datum(example.model_input, example.weights_T)], "cross_entropy")
    client.optim_step(AdamParams(learning_rate=0.5)).result()
    return client.save_weights_for_sampler("one").result(), client.save_state("one").result()


def test_checkpoint_names_open_the_checkpoint(
    tmp_path: pathlib.Path, backend: LocalBackend, tiny: tuple[LocalSamplingClient, Renderer], trained: tuple[str, str]
) -> None:
    sampler_path, state_path = trained
    expected = _probe(backend.create_sampling_client(model_path=sampler_path).result())
    assert expected != _probe(tiny[0])  # the step changed the weights: a base-model sampler would be caught
    folder = backend.checkpoint_dir / sampler_path.removeprefix("local://")
    copy = shutil.copytree(folder, tmp_path / "copied")  # a checkpoint folder outside any checkpoint directory
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(backend.checkpoint_dir)
    write_state(run_dir, RunState(step=1, checkpoint=state_path, sampler_checkpoint=sampler_path))
    for name, options in [
        (sampler_path, {"checkpoint_dir": str(backend.checkpoint_dir)}),
        (str(folder), {}),
        (str(copy), {}),
        (str(run_dir), {}),
    ]:
        opened = open_sampler(name, renderer="role_colon", **options)  # type: ignore[arg-type]
        try:
            assert _probe(opened.sampler) == expected, name
            assert opened.sampler.get_base_model() == "tiny-llama"
            assert opened.renderer.name == "role_colon"
        finally:
            opened.close()
    # a run directory whose state names only the training state samples that
    write_state(run_dir, RunState(step=1, checkpoint=state_path))
    opened = open_sampler(str(run_dir), renderer="role_colon")
    try:
        assert _probe(opened.sampler) == expected
    finally:
        opened.close()


def test_a_tinker_path_samples_on_its_server(
    tmp_path: pathlib.Path, tiny: tuple[LocalSamplingClient, Renderer]
) -> None:
    """``tinkerflow/tinker://...`` with the server's URL: sampled there, base model asked of the server."""
    tinker = pytest.importorskip("tinker")
    from tinkerflow.shell.serve.server import ServerConfig, ServerThread

    with ServerThread(ServerConfig(store=tmp_path / "store", device="cpu")) as server:
        service = tinker.ServiceClient(base_url=server.base_url, api_key=server.config.api_key)
        try:
            training = service.create_lora_training_client(base_model="tiny-llama", rank=2).result()
            path = training.save_weights_for_sampler("base").result().path
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("TINKER_API_KEY", server.config.api_key)
                model = get_model(f"tinkerflow/{path}", base_url=server.base_url, memoize=False, renderer="role_colon")
                output = asyncio.run(model.generate("hi", config=GenerateConfig(max_tokens=6)))
                assert isinstance(model.api, inspect_eval.TinkerflowModelAPI)
                assert model.api.opened.sampler.get_base_model() == "tiny-llama"  # asked of the server
                model.api.close()
        finally:
            service.close("success").result(timeout=30)
    # an untrained LoRA adapter samples as its base model
    sampler, renderer = tiny
    spec = EvalSpec(name="hi", kind="regex", pattern=".", max_tokens=6)
    expected = evaluate(spec, [EvalExample(id="0", messages=(Message(role="user", content="hi"),))], sampler, renderer)
    assert output.completion == expected.samples[0].response


# -- generation settings, tools, refusals ----------------------------------------------------------------------------


def test_generation_settings_reach_the_sampler() -> None:
    sampler = ScriptedSampler(TINY_RENDERER, lambda prompt: (Message(role="assistant", content="12 34 56"), True))
    with registered_sampler(sampler, TINY_RENDERER, max_tokens=9, temperature=0.5, seed=4) as name:
        model = get_model(name, memoize=False)
        default = asyncio.run(model.generate("q"))
        config = GenerateConfig(
            max_tokens=3, temperature=0.7, top_p=0.9, top_k=5, seed=8, stop_seqs=["34"], num_choices=2, logprobs=True
        )
        output = asyncio.run(model.generate("q", config=config))
    (_, _, first), (prompt, count, params) = sampler.requests
    assert first == SamplingParams(max_tokens=9, temperature=0.5, stop_strings=("\n\nUser:",), seed=4)
    assert params == SamplingParams(
        max_tokens=3, temperature=0.7, top_p=0.9, top_k=5, stop_strings=("\n\nUser:", "34"), seed=8
    )
    assert count == len(output.choices) == 2
    assert (default.completion, default.stop_reason) == ("12 34 56", "stop")
    assert output.completion == output.choices[1].message.text == "12 "  # cut before the stop sequence
    assert output.usage is not None
    assert output.usage.input_tokens == len(prompt)
    sampled = len(answer_tokens(TINY_RENDERER, Message(role="assistant", content="12 34 56")))
    assert output.usage.output_tokens == 2 * sampled
    assert output.choices[0].logprobs is not None
    assert [entry.logprob for entry in output.choices[0].logprobs.content] == [-0.25] * sampled


def test_tool_calls_round_trip(tmp_path: pathlib.Path) -> None:
    """With a renderer that writes tools (qwen3), Inspect's tools reach the prompt, the sampled call comes back as
    an Inspect tool call, Inspect runs it, and its result is rendered for the next turn."""
    renderer = get_renderer("qwen3", cached_tokenizer("qwen3"))

    def reply(prompt: str) -> tuple[Message, bool]:
        if "<tool_response>\n5\n</tool_response>" in prompt:
            return Message(role="assistant", content="5"), True
        assert '"name": "add"' in prompt  # the tool is offered
        return Message(role="assistant", content="", tool_calls=(ToolCall.create("add", {"a": 2, "b": 3}),)), True

    @tool
    def add() -> object:
        async def execute(a: int, b: int) -> int:
            """Add two integers.

            Args:
              a: the first.
              b: the second.
            """
            return a + b

        return execute

    task = Task(
        dataset=[Sample(input="What is 2 + 3?", target="5")], solver=[use_tools(add()), generate()], scorer=match()
    )
    sampler = ScriptedSampler(renderer, reply)
    with registered_sampler(sampler, renderer) as model:
        log = _eval(task, model, tmp_path)
        (sample,) = log.samples or []
        roles = [(message.role, message.text) for message in sample.messages]
        call = sample.messages[1].tool_calls[0]  # type: ignore[union-attr]
        (scored,) = scored_samples(log)
    assert roles == [("user", "What is 2 + 3?"), ("assistant", ""), ("tool", "5"), ("assistant", "5")]
    assert (call.function, call.arguments) == ("add", {"a": 2, "b": 3})
    assert (scored.score, scored.response) == (1.0, "5")
    assert len(sampler.requests) == 2


def test_media_is_refused_by_name() -> None:
    image = ContentImage(image="data:image/png;base64,iVBORw0KGgo=")
    with pytest.raises(ConfigError, match=r"messages\[1\].*image content"):
        inspect_messages_to_tinkerflow([ChatMessageUser(content="hi"), ChatMessageUser(content=[image])])
    text = inspect_messages_to_tinkerflow([ChatMessageUser(content=[ContentText(text="a"), ContentText(text="b")])])
    assert text == (Message(role="user", content="ab"),)


def test_unknown_and_released_samplers_are_refused() -> None:
    with registered_sampler(ScriptedSampler(TINY_RENDERER, arithmetic_reply), TINY_RENDERER) as name:
        assert open_sampler(name.removeprefix("tinkerflow/")).renderer is TINY_RENDERER
    with pytest.raises(ConfigError, match="not registered"):
        open_sampler(name.removeprefix("tinkerflow/"))


def test_a_failing_task_raises_with_its_error(tmp_path: pathlib.Path) -> None:
    """A ``file.py@task`` whose scorer breaks: the evaluation raises with Inspect's error, and the sampler is
    released."""
    tasks = tmp_path / "tasks.py"
    tasks.write_text(
        "from inspect_ai import Task, task\n"
        "from inspect_ai.dataset import Sample\n"
        "from inspect_ai.scorer import Score, accuracy, scorer\n"
        "from inspect_ai.solver import generate\n\n"
        "@scorer(metrics=[accuracy()])\n"
        "def broken():\n"
        "    async def score(state, target):\n"
        "        raise RuntimeError('the scorer broke')\n"
        "    return score\n\n"
        "@task\n"
        "def failing():\n"
        "    return Task(dataset=[Sample(input='What is 1 + 1?', target='2')], solver=generate(), scorer=broken())\n"
    )
    spec = EvalSpec(name="bad", kind="inspect", task=f"{tasks}@failing")
    with pytest.raises(ConfigError, match="the scorer broke"):
        run_inspect_task(spec, ScriptedSampler(TINY_RENDERER, arithmetic_reply), TINY_RENDERER)
    assert not inspect_eval._live


def test_arithmetic_items_are_fixed_by_their_seed() -> None:
    assert arithmetic_items(5, seed=1) == arithmetic_items(5, seed=1)
    assert arithmetic_items(5, seed=1) != arithmetic_items(5, seed=2)
    for item in arithmetic_items(30, seed=3, max_operand=50):
        a, b = (int(value) for value in _QUESTION.findall(item.question)[0])
        assert item.answer == str(a + b)
        assert max(a, b) <= 50
    with pytest.raises(ConfigError, match="n"):
        arithmetic_items(0)
