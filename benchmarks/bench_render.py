"""Render throughput: tinkerflow vs tinker-cookbook 0.6.1 on 10,000 multi-turn conversations, same tokenizer.

Both render every conversation to (tokens, weights) (``last_assistant_message``, the default of
``build_supervised_example``, which includes the generation-prompt check) with ``qwen3`` and with ``qwen3_5`` (a
tinker-cookbook 0.6.1 family) using the offline Qwen3 vocabulary: tinkerflow through its ``FastTokenizer``, the
cookbook through a transformers fast tokenizer built from the same ``tokenizer.json``. A sample of the outputs is
compared token for token first. tinkerflow is timed three ways per renderer:

* ``build_supervised_batch``: a ``SupervisedExample`` record per conversation (64 conversations tokenized per call);
* ``packed``: ``tinkerflow.render.packing.packed_batches``, the dataset path (what ``conversation_datums`` uses):
  the same tokens and weights packed into arrays, no record per conversation;
* ``overlapped``: ``tinkerflow.shell.io.prefetch.packed_batches``, the same batches with the tokenizer a chunk or
  two ahead on a helper thread;

plus one conversation at a time (``build_supervised_example``).

Timings are the best of ``--rounds`` interleaved rounds (the machine may be shared; interleaving keeps the
ratios fair). Wall-clock seconds and CPU seconds of the process (``time.process_time``, every thread) are both
reported.

The Rust tokenizer encodes a batch on its own thread pool unless ``TOKENIZERS_PARALLELISM`` turns that off, so
both settings are timed (the variable is set by this script around each timed call, whatever it was at start):

* **pool** (the library's default): the raw cost is the fastest of ``encode_batch`` in batches of 8, 64, 128 and
  per conversation; tinkerflow's paths call the same pool (``overlapped``: one helper thread feeding it);
* **threads** (``TOKENIZERS_PARALLELISM=false``): the raw cost is the texts encoded in the chunks tinkerflow uses
  (64 conversations' texts) on one thread per CPU; ``overlapped`` uses as many helper threads
  (:func:`tinkerflow.shell.io.prefetch.encode_workers`);
* **one core** (``TOKENIZERS_PARALLELISM=false``, nothing on other threads): the raw tokenizer (batches of 64
  texts, or the chunks tinkerflow sends, whichever is faster) against ``packed``: here CPU time is wall-clock
  time, and the ratio is the work tinkerflow adds to the tokenizer's, free of scheduling noise. This is the
  **cost ratio** (``cost_ratio_to_raw_tokenizer``, best against best), the headline; each round also gives two
  ratios of adjacent runs (``packed`` against the raw run just before, and the second ``packed`` against the raw
  run just after), whose median (``cost_ratio_median_of_pairs``) is less sensitive to the machine's drift.

The same one-core cost is also measured **interleaved chunk by chunk** (``cost_ratio_interleaved``, the median of
``--rounds`` passes): for each chunk of 64 conversations, the raw tokenizer on its texts and ``packed`` on its
conversations run one right after the other (which goes first alternates), and each side's CPU seconds are summed
over the pass. The two sides then see the same machine within milliseconds, so the minute-scale drift that moves
best-against-best cancels; each side also runs with the caches the other left (the tokenizer after Python work,
as in the real path).

``dataset_ratio_to_raw_tokenizer`` is the dataset path (``overlapped``, the faster of the two settings) against the
fastest raw tokenization found in either setting, wall-clock: on two cores it also measures how well the Python
work and the tokenizer share the cores (GIL hand-offs), and varies more. The threads and one-core pairs are timed
in A B B A order in every round (the speed of a shared machine drifts by several percent over a minute).

The Python work on top of the tokenizer is also timed stage by stage (``render_chunks`` and ``pack_chunk`` CPU
time on one thread, the encodings made beforehand; keys ``*python_render_us`` / ``*python_pack_us``, per
conversation): it hardly depends on the load of the machine.

Run: ``python benchmarks/bench_render.py`` (``--conversations N`` to change the size). The last line is a JSON
object with the figures; the targets are ``speedup_vs_cookbook >= 3`` and a ratio to the raw tokenizer of at most
1.1 (the one-core cost: ``cost_ratio_interleaved``, and ``cost_ratio_to_raw_tokenizer`` best against best;
``qwen3``; the ``qwen3_5_*`` keys are the same for ``qwen3_5``;
``ratio_to_raw_tokenizer`` is ``build_supervised_batch``, one record per conversation, on the pool).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit
from tinkerflow.chat import Conversation, Message
from tinkerflow.render import build_supervised_batch, build_supervised_example, get_renderer
from tinkerflow.shell.io.tokenizers import offline_tokenizer, offline_tokenizer_dir

WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "é",
    "日本語",
    "🙂",
    "2+2=4",
    "{json:",
    "true}",
    "\n",
)


def conversations(count: int, seed: int = 0) -> list[Conversation]:
    """``count`` chats: an optional system prompt, then 1-4 user/assistant turns of 5-60 words each."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + rng.choice([".", "?", "!"])

    result = []
    for _ in range(count):
        messages = [Message(role="system", content=text())] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages += [Message(role="user", content=text()), Message(role="assistant", content=text())]
        result.append(Conversation(messages=tuple(messages)))
    return result


def _timed(function: object) -> float:
    start = time.perf_counter()
    function()  # type: ignore[operator]  # a zero-argument callable
    return time.perf_counter() - start


def _timed_both(function: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of the process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


RENDERERS = ("qwen3", "qwen3_5")

CHUNK = 64
"""Conversations per tokenizer call: ``packed_batches``' default chunk, which the raw chunked baselines copy."""


@contextlib.contextmanager
def tokenizer_pool(on: bool) -> Iterator[None]:
    """``TOKENIZERS_PARALLELISM`` set for the calls inside (the Rust library reads it at each batch call)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--renderers", default=",".join(RENDERERS), help="comma-separated renderer names (qwen3 must be one)"
    )
    args = parser.parse_args()
    renderers = tuple(name for name in args.renderers.split(",") if name)
    if "qwen3" not in renderers:
        parser.error("--renderers must include qwen3 (the headline figures are qwen3's)")
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    from tinker_cookbook.renderers import get_renderer as cookbook_get_renderer
    from transformers import AutoTokenizer

    from tinkerflow.render.packing import encode_chunk, pack_chunk, packed_batches, render_chunks
    from tinkerflow.shell.io import prefetch

    tokenizer = offline_tokenizer("qwen3")
    hf = AutoTokenizer.from_pretrained(str(offline_tokenizer_dir("qwen3")), clean_up_tokenization_spaces=False)
    data = conversations(args.conversations)
    as_dicts = [[{"role": m.role, "content": m.text()} for m in c.messages] for c in data]
    ours = {name: get_renderer(name, tokenizer) for name in renderers}
    theirs = {name: cookbook_get_renderer(name, hf) for name in renderers}

    # the same tokens and weights first (on a sample)
    for name in renderers:
        for conversation, messages in zip(data[:200], as_dicts[:200], strict=True):
            example = build_supervised_example(ours[name], conversation)
            model_input, weights = theirs[name].build_supervised_example(messages)
            reference = [t for chunk in model_input.chunks for t in chunk.tokens]
            assert example.tokens_T.tolist() == reference, f"{name}: tokens differ from the cookbook"
            assert example.weights_T.tolist() == [float(w) for w in weights.tolist()], f"{name}: weights differ"
        for conversation in data[:200]:  # warm-up
            build_supervised_example(ours[name], conversation)

    def batched(name: str) -> Callable[[], object]:
        return lambda: build_supervised_batch(ours[name], data)

    def packed(name: str) -> Callable[[], object]:
        return lambda: sum(1 for _ in packed_batches(ours[name], data, batch_size=CHUNK))

    def overlapped(name: str) -> Callable[[], object]:
        return lambda: sum(1 for _ in prefetch.packed_batches(ours[name], data, batch_size=CHUNK))

    def one_by_one(name: str) -> Callable[[], object]:
        return lambda: [build_supervised_example(ours[name], conversation) for conversation in data]

    texts_per = [[m.text() for m in c.messages] for c in data]
    flat = [text for texts in texts_per for text in texts]
    chunk_texts = [
        [text for texts in texts_per[start : start + CHUNK] for text in texts] for start in range(0, len(data), CHUNK)
    ]
    with tokenizer_pool(False):
        workers = prefetch.encode_workers()

    def raw_batched(size: int) -> Callable[[], object]:
        def run() -> None:
            for start in range(0, len(flat), size):
                tokenizer.encode_batch(flat[start : start + size])

        return run

    def raw_per_conversation() -> None:
        for texts in texts_per:
            tokenizer.encode_batch(texts)

    def raw_threads() -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(tokenizer.encode_batch, chunk_texts):
                pass

    def raw_chunks() -> None:
        for texts in chunk_texts:
            tokenizer.encode_batch(texts)

    def raw_each() -> None:
        for text in flat:
            tokenizer.encode(text)

    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}

    def record(key: str, function: Callable[[], object]) -> float:
        wall, cpu = _timed_both(function)
        best[key] = min(best.get(key, float("inf")), wall)
        best_cpu[key] = min(best_cpu.get(key, float("inf")), cpu)
        return cpu

    paired: dict[str, list[float]] = {name: [] for name in renderers}  # one-core cost, run by adjacent run
    interleaved: dict[str, list[float]] = {name: [] for name in renderers}  # one-core cost, chunk by chunk

    def interleaved_round(name: str, flip: int) -> float:
        """One pass over the data, chunk by chunk: the raw tokenizer on the chunk's texts and ``packed_batches``
        on the chunk's conversations, one right after the other (which goes first alternates), CPU seconds
        summed per side: the ratio of the sums (the machine's drift cancels within milliseconds)."""
        spent = [0.0, 0.0]
        renderer = ours[name]
        for index, texts in enumerate(chunk_texts):
            part = data[index * CHUNK : (index + 1) * CHUNK]
            for side in (0, 1) if (index + flip) % 2 == 0 else (1, 0):
                start = time.process_time()
                if side == 0:
                    tokenizer.encode_batch(texts)
                else:
                    for _ in packed_batches(renderer, part, batch_size=CHUNK):
                        pass
                spent[side] += time.process_time() - start
        return spent[1] / spent[0]

    for _ in range(args.rounds):
        with tokenizer_pool(True):
            record("raw_batch8", raw_batched(8))
            for name in renderers:
                record(f"{name}", batched(name))
                record(f"{name}_packed", packed(name))
            record("raw_batch64", raw_batched(64))
            record("raw_batch128", raw_batched(128))
            record("raw_per_conversation", raw_per_conversation)
            for name in renderers:
                record(f"{name}_overlapped", overlapped(name))
                record(f"{name}_one_by_one", one_by_one(name))
        with tokenizer_pool(False):  # each pair in A B B A order: the machine's speed drifts
            record("raw_threads", raw_threads)
            for name in (*renderers, *reversed(renderers)):
                record(f"{name}_overlapped_threads", overlapped(name))
            record("raw_threads", raw_threads)
            before = record("raw_one_core", raw_batched(64))
            first = {name: record(f"{name}_packed_one_core", packed(name)) for name in renderers}
            second = {name: record(f"{name}_packed_one_core", packed(name)) for name in reversed(renderers)}
            after = record("raw_one_core", raw_chunks)
            for name in renderers:
                paired[name] += [first[name] / before, second[name] / after]
            for name in renderers:
                interleaved[name].append(interleaved_round(name, len(interleaved[name])))
    # the Python work on top of the tokenizer, stage by stage (CPU seconds on this thread, the encodings made
    # beforehand): unlike the wall-clock ratios it hardly depends on the load of the machine
    stage_cpu: dict[str, float] = {}
    for name in renderers:
        encodings = [encode_chunk(tokenizer, chunk) for chunk in render_chunks(ours[name], data)]
        for _ in range(max(args.rounds, 5)):
            spent = {"render": 0.0, "pack": 0.0}
            chunks = render_chunks(ours[name], data)
            for encoded in encodings:  # chunk by chunk, as packed_batches runs them
                start = time.process_time()
                chunk = next(chunks)
                middle = time.process_time()
                pack_chunk(ours[name], chunk, encoded)
                spent["render"] += middle - start
                spent["pack"] += time.process_time() - middle
            for stage, seconds in spent.items():
                stage_cpu[f"{name}_{stage}"] = min(stage_cpu.get(f"{name}_{stage}", float("inf")), seconds)
    cookbook_s = {
        name: _timed(lambda name=name: [theirs[name].build_supervised_example(m) for m in as_dicts])
        for name in renderers
    }
    pool_raw = ("raw_batch8", "raw_batch64", "raw_batch128", "raw_per_conversation")
    raw_s = min(best[key] for key in pool_raw)
    raw_cpu_s = min(best_cpu[key] for key in pool_raw)
    fastest_raw = min((*pool_raw, "raw_threads"), key=best.__getitem__)
    with tokenizer_pool(True):
        raw_each_s = _timed(raw_each)
    tokens = sum(build_supervised_example(ours["qwen3"], c).length for c in data[:1000]) * len(data) / 1000
    print(f"conversations            {len(data)} ({len(flat)} messages, ~{tokens:,.0f} tokens)")
    print(f"helper threads (no pool) {workers}")
    figures: dict[str, object] = {
        "conversations": len(data),
        "messages": len(flat),
        "train_on": "last_assistant_message",
        "encode_workers": workers,
        "fastest_raw": fastest_raw,
    }
    for name in renderers:
        prefix = "" if name == "qwen3" else f"{name}_"
        ours_s = best[name]
        dataset_key = min((f"{name}_overlapped", f"{name}_overlapped_threads"), key=best.__getitem__)
        dataset_ratio = best[dataset_key] / best[fastest_raw]
        one_core = best_cpu[f"{name}_packed_one_core"] / best_cpu["raw_one_core"]
        one_core_median = statistics.median(paired[name])
        chunked = statistics.median(interleaved[name])
        print(f"[{name}] tinkerflow batch        {ours_s:.2f} s  ({len(data) / ours_s:,.0f} conversations/s)")
        print(f"[{name}] tinkerflow packed       {best[f'{name}_packed']:.2f} s")
        print(
            f"[{name}] tinkerflow overlapped   {best[f'{name}_overlapped']:.2f} s (pool), "
            f"{best[f'{name}_overlapped_threads']:.2f} s ({workers} threads)"
        )
        print(f"[{name}] tinkerflow one by one   {best[f'{name}_one_by_one']:.2f} s")
        print(f"[{name}] tinker-cookbook         {cookbook_s[name]:.2f} s  ({cookbook_s[name] / ours_s:.2f}x slower)")
        print(
            f"[{name}] dataset path / fastest raw tokenizer  {dataset_ratio:.2f}x wall"
            f"  ({dataset_key} vs {fastest_raw})"
        )
        print(
            f"[{name}] cost (one core): packed / raw tokenizer  {one_core:.3f}x best / best,"
            f" {one_core_median:.3f}x median of {len(paired[name])} adjacent pairs"
        )
        print(
            f"[{name}] cost (one core), interleaved chunk by chunk  {chunked:.3f}x median of"
            f" {len(interleaved[name])} rounds ({min(interleaved[name]):.3f}-{max(interleaved[name]):.3f}x)"
            "  (target <= 1.1)"
        )
        packed_ratio, overlapped_ratio = best[f"{name}_packed"] / raw_s, best[f"{name}_overlapped"] / raw_s
        print(
            f"[{name}] pool: ratio to raw tokenizer  batch {ours_s / raw_s:.2f}x, packed {packed_ratio:.2f}x,"
            f" overlapped {overlapped_ratio:.2f}x"
        )
        threads_ratio = best[f"{name}_overlapped_threads"] / best["raw_threads"]
        threads_cpu = best_cpu[f"{name}_overlapped_threads"] / best_cpu["raw_threads"]
        print(f"[{name}] threads: overlapped / raw       {threads_ratio:.3f}x wall, {threads_cpu:.3f}x CPU")
        cpu = {path: best_cpu[f"{name}{path}"] / raw_cpu_s for path in ("", "_packed", "_overlapped")}
        print(
            f"[{name}] pool: CPU-time ratio          batch {cpu['']:.2f}x, packed {cpu['_packed']:.2f}x,"
            f" overlapped {cpu['_overlapped']:.2f}x"
        )
        render_us, pack_us = (stage_cpu[f"{name}_{stage}"] * 1e6 / len(data) for stage in ("render", "pack"))
        raw_us = best_cpu["raw_one_core"] * 1e6 / len(data)
        print(
            f"[{name}] Python work (CPU)      render {render_us:.1f} us + pack {pack_us:.1f} us per conversation"
            f" (raw tokenizer on one core {raw_us:.0f} us: +{(render_us + pack_us) / raw_us:.1%})"
        )
        figures.update(
            {
                f"{prefix}dataset_ratio_to_raw_tokenizer": round(dataset_ratio, 3),
                f"{prefix}cost_ratio_to_raw_tokenizer": round(one_core, 3),
                f"{prefix}cost_ratio_median_of_pairs": round(one_core_median, 3),
                f"{prefix}cost_ratio_pairs": [round(ratio, 3) for ratio in paired[name]],
                f"{prefix}cost_ratio_interleaved": round(chunked, 3),
                f"{prefix}cost_ratio_interleaved_rounds": [round(ratio, 3) for ratio in interleaved[name]],
                f"{prefix}python_render_us": round(render_us, 2),
                f"{prefix}python_pack_us": round(pack_us, 2),
                f"{prefix}tinkerflow_s": round(ours_s, 3),
                f"{prefix}tinkerflow_packed_s": round(best[f"{name}_packed"], 3),
                f"{prefix}tinkerflow_overlapped_s": round(best[f"{name}_overlapped"], 3),
                f"{prefix}tinkerflow_overlapped_threads_s": round(best[f"{name}_overlapped_threads"], 3),
                f"{prefix}tinkerflow_packed_one_core_s": round(best[f"{name}_packed_one_core"], 3),
                f"{prefix}tinkerflow_one_by_one_s": round(best[f"{name}_one_by_one"], 3),
                f"{prefix}cookbook_s": round(cookbook_s[name], 3),
                f"{prefix}speedup_vs_cookbook": round(cookbook_s[name] / ours_s, 2),
                f"{prefix}ratio_to_raw_tokenizer": round(ours_s / raw_s, 2),
                f"{prefix}packed_ratio_to_raw_tokenizer": round(packed_ratio, 2),
                f"{prefix}overlapped_ratio_to_raw_tokenizer": round(overlapped_ratio, 2),
                f"{prefix}threads_overlapped_ratio_to_raw_tokenizer": round(threads_ratio, 3),
                f"{prefix}threads_cpu_ratio_overlapped": round(threads_cpu, 3),
                f"{prefix}cpu_ratio_batch": round(cpu[""], 3),
                f"{prefix}cpu_ratio_packed": round(cpu["_packed"], 3),
                f"{prefix}cpu_ratio_overlapped": round(cpu["_overlapped"], 3),
            }
        )
    for key in (*pool_raw, "raw_threads", "raw_one_core"):
        print(f"raw tokenizer ({key[4:]:<16}) {best[key]:.2f} s wall, {best_cpu[key]:.2f} s CPU")
    print(f"raw tokenizer (per text)        {raw_each_s:.2f} s")
    figures.update(
        {
            "raw_tokenizer_s": round(raw_s, 3),
            "raw_tokenizer_cpu_s": round(raw_cpu_s, 3),
            "raw_tokenizer_threads_s": round(best["raw_threads"], 3),
            "raw_tokenizer_one_core_s": round(best["raw_one_core"], 3),
            "raw_tokenizer_per_text_s": round(raw_each_s, 3),
        }
    )
    emit("render", figures)


if __name__ == "__main__":
    main()
