"""Conversations -> training datums: tinkerflow vs tinker-cookbook 0.6.1 vs the raw tokenizer, same data, one run.

Every conversation (multi-turn, generated deterministically as in ``bench_render.py``) becomes one next-token
datum (input tokens, target tokens, weights) with the defaults of the cookbook's ``conversation_to_datum``:
``all_assistant_messages``, ``mean`` reduction, here cut to ``--max-length`` (384 by default, so about one
conversation in ten is truncated). Three contenders, same vocabulary (the offline Qwen3 tokenizer, or the offline
Llama-3 one with ``--renderer llama3``):

* tinkerflow: ``conversation_datums(..., packer=tinkerflow.shell.io.prefetch.packed_batches)`` (a batch) ->
  ``Datum`` records, the tokenizer on a helper thread overlapping the Python work (the core's default packer, all
  on one thread, and one-by-one ``conversation_datum`` are reported too);
* tinker-cookbook: ``tinker_cookbook.supervised.data.conversation_to_datum`` on each conversation, its renderer
  built on a transformers fast tokenizer loaded from the same ``tokenizer.json``;
* the floor: batch tokenization of the same message texts (every message's text) with the same Rust tokenizer,
  ``encode_batch`` in batches of 8, 64, 256 and 1024 texts and per conversation; the fastest is the floor.

Every contender that makes datums keeps them in a list (as the batch API returns them); the floor keeps nothing.
Records that stay alive cost garbage-collector passes (a full collection of this process's heap, which holds
torch for the cookbook, takes ~0.15 s); the time spent in collections during each best run is reported.

A sample of the outputs is compared token for token first (inputs, targets and weights, exactly), and the batch
API is checked against one-by-one on it. Timings are the best of ``--rounds`` interleaved rounds (the machine may
be shared: a busy machine slows the parallel tokenizer most, so check the load average in the JSON line).

Run: ``python benchmarks/bench_conversation_datum.py`` (``--conversations N``, ``--rounds R``, ``--renderer
llama3``, ``--max-length L``). The last line is a JSON object with the figures. Targets (supervised-learning
issue): ``ratio_to_floor <= 1.3`` (tinkerflow time / floor time) and ``speedup_vs_cookbook >= 2``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit
from bench_render import conversations
from tinkerflow.datum import Datum
from tinkerflow.render import get_renderer
from tinkerflow.shell.io.prefetch import packed_batches as overlapped_packer
from tinkerflow.shell.io.tokenizers import offline_tokenizer, offline_tokenizer_dir
from tinkerflow.supervised import conversation_datum, conversation_datums

FLOOR_BATCH_SIZES = (8, 64, 256, 1024)


class _GcClock:
    """Seconds spent in garbage collections since the last :meth:`reset` (through ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.seconds = 0.0


def _timed(function: Callable[[], object], clock: _GcClock) -> tuple[float, float]:
    """Wall seconds of one call, and the seconds of it spent in garbage collections."""
    clock.reset()
    start = time.perf_counter()
    function()
    return time.perf_counter() - start, clock.seconds


def _same(ours: Datum, theirs: object) -> bool:
    """Token-for-token equality of a tinkerflow datum and a ``tinker.Datum`` (weights exactly, as float32)."""
    model_input = theirs.model_input  # type: ignore[attr-defined]
    inputs = [token for chunk in model_input.chunks for token in chunk.tokens]
    targets = theirs.loss_fn_inputs["target_tokens"].to_numpy()  # type: ignore[attr-defined]
    weights = theirs.loss_fn_inputs["weights"].to_numpy().astype(np.float32)  # type: ignore[attr-defined]
    assert ours.weights_T is not None
    return (
        ours.model_input.to_tokens().tolist() == inputs
        and np.array_equal(ours.target_tokens_T, targets)
        and weights.shape == ours.weights_T.shape
        and np.array_equal(ours.weights_T, weights)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--renderer", choices=("qwen3", "llama3"), default="qwen3")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--sample", type=int, default=500, help="conversations compared token for token")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the cookbook warns about qwen3's missing extension property on every call
    warnings.simplefilter("ignore")

    from tinker_cookbook.renderers import get_renderer as cookbook_get_renderer
    from tinker_cookbook.supervised.data import conversation_to_datum
    from transformers import AutoTokenizer

    name = args.renderer
    tokenizer = offline_tokenizer(name)
    hf = AutoTokenizer.from_pretrained(str(offline_tokenizer_dir(name)), clean_up_tokenization_spaces=False)
    ours = get_renderer(name, tokenizer)
    theirs = cookbook_get_renderer(name, hf)
    max_length = args.max_length
    data = conversations(args.conversations)
    as_dicts = [[{"role": m.role, "content": m.text()} for m in c.messages] for c in data]
    texts_per = [[m.text() for m in c.messages] for c in data]
    flat = [text for texts in texts_per for text in texts]

    # the same inputs, targets and weights first (on a sample), and the batch equals one by one
    sample = min(args.sample, len(data))
    batch = conversation_datums(
        data[:sample], renderer=ours, max_length=max_length, batch_size=64, packer=overlapped_packer
    )
    assert batch == conversation_datums(data[:sample], renderer=ours, max_length=max_length, batch_size=64)
    for index in range(sample):
        single = conversation_datum(data[index], renderer=ours, max_length=max_length)
        assert batch[index] == single, f"conversation {index}: batch and one-by-one differ"
        reference = conversation_to_datum(as_dicts[index], theirs, max_length)
        assert _same(batch[index], reference), f"conversation {index}: differs from the cookbook"

    def run_ours() -> object:
        return conversation_datums(data, renderer=ours, max_length=max_length, packer=overlapped_packer)

    def run_ours_sequential() -> object:
        return conversation_datums(data, renderer=ours, max_length=max_length)

    # every contender that makes datums keeps them (a list, as the batch API returns): records that stay alive
    # cost garbage-collector passes, and comparing a kept list with discarded ones would hide that
    def run_ours_one_by_one() -> object:
        return [conversation_datum(conversation, renderer=ours, max_length=max_length) for conversation in data]

    def run_cookbook() -> object:
        return [conversation_to_datum(messages, theirs, max_length) for messages in as_dicts]

    def floor_batched(size: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(flat), size):
                tokenizer.encode_batch(flat[start : start + size])

        return run

    def floor_per_conversation() -> None:
        for texts in texts_per:
            tokenizer.encode_batch(texts)

    contenders: dict[str, Callable[[], object]] = {
        **{f"floor_batch{size}": floor_batched(size) for size in FLOOR_BATCH_SIZES},
        "floor_per_conversation": floor_per_conversation,
        "tinkerflow": run_ours,
        "tinkerflow_sequential": run_ours_sequential,
        "tinkerflow_one_by_one": run_ours_one_by_one,
        "cookbook": run_cookbook,
    }
    load_before = os.getloadavg()[0]
    run_ours()  # warm-up (caches, allocator)
    floor_batched(64)()
    clock = _GcClock()
    runs: dict[str, tuple[float, float]] = {}  # the best run of each: (seconds, of which in collections)
    for round_index in range(args.rounds):
        # rotate the order every round so no contender always runs right after the same neighbour
        names = list(contenders)
        shift = round_index % len(names)
        for key in names[shift:] + names[:shift]:
            runs[key] = min(runs.get(key, (float("inf"), 0.0)), _timed(contenders[key], clock))
    best = {key: seconds for key, (seconds, _) in runs.items()}

    floors = {key: seconds for key, seconds in best.items() if key.startswith("floor_")}
    floor_name = min(floors, key=floors.__getitem__)
    floor_s = floors[floor_name]
    ours_s, cookbook_s = best["tinkerflow"], best["cookbook"]
    one_by_one_s = best["tinkerflow_one_by_one"]
    sequential_s = best["tinkerflow_sequential"]
    tokens = sum(datum.length for datum in conversation_datums(data[:1000], renderer=ours, max_length=max_length))
    tokens_total = tokens * len(data) / min(1000, len(data))
    ratio = ours_s / floor_s
    speedup = cookbook_s / ours_s
    print(f"renderer                   {name} (all_assistant_messages, mean, max_length {max_length})")
    print(f"conversations              {len(data)} ({len(flat)} messages, ~{tokens_total:,.0f} datum tokens)")
    print(f"tinkerflow (batch)         {ours_s:.3f} s  ({len(data) / ours_s:,.0f} conversations/s)")
    print(f"tinkerflow (sequential)    {sequential_s:.3f} s  ({sequential_s / floor_s:.2f}x the floor)")
    print(f"tinkerflow (one by one)    {one_by_one_s:.3f} s")
    print(f"tinker-cookbook            {cookbook_s:.3f} s  ({len(data) / cookbook_s:,.0f} conversations/s)")
    for key, seconds in floors.items():
        print(f"{key:<26} {seconds:.3f} s{'  <- floor' if key == floor_name else ''}")
    print(f"tinkerflow / floor         {ratio:.2f}x   (target <= 1.3)")
    print(f"cookbook / floor           {cookbook_s / floor_s:.2f}x")
    print(f"speedup vs cookbook        {speedup:.2f}x   (target >= 2)")
    print(f"in garbage collection      tinkerflow {runs['tinkerflow'][1]:.3f} s, cookbook {runs['cookbook'][1]:.3f} s")
    emit(
        "conversation_datum",
        {
            "conversations": len(data),
            "messages": len(flat),
            "renderer": name,
            "train_on": "all_assistant_messages",
            "reduction": "mean",
            "max_length": max_length,
            "rounds": args.rounds,
            "tinkerflow_s": round(ours_s, 4),
            "tinkerflow_sequential_s": round(sequential_s, 4),
            "tinkerflow_one_by_one_s": round(one_by_one_s, 4),
            "cookbook_s": round(cookbook_s, 4),
            "floor_s": round(floor_s, 4),
            "floor": floor_name,
            "floors_s": {key: round(seconds, 4) for key, seconds in floors.items()},
            "ratio_to_floor": round(ratio, 3),
            "cookbook_ratio_to_floor": round(cookbook_s / floor_s, 3),
            "speedup_vs_cookbook": round(speedup, 2),
            "meets_targets": ratio <= 1.3 and speedup >= 2,
            "gc_s": {key: round(collected, 4) for key, (_, collected) in runs.items()},
            "cpus": os.cpu_count(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    )


if __name__ == "__main__":
    main()
