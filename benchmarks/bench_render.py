"""Render throughput: tinkerflow vs tinker-cookbook 0.6.1 on 10,000 multi-turn conversations, same tokenizer.

Both render every conversation to (tokens, weights) with the ``qwen3`` renderer (``last_assistant_message``, the
default of ``build_supervised_example``, which includes the generation-prompt check) using the offline Qwen3
vocabulary: tinkerflow through its ``FastTokenizer`` with ``build_supervised_batch`` (64 conversations tokenized
per call; one by one is reported too), the cookbook through a transformers fast tokenizer built from the same
``tokenizer.json``. A sample of the outputs is compared token for token first.

Timings are the best of ``--rounds`` interleaved rounds (the machine may be shared; interleaving keeps the
ratios fair).

The raw tokenizer cost is the fastest way found to tokenize the same texts (every message's text) with the same
Rust tokenizer: ``encode_batch_fast`` in batches of 8, 64 and per conversation (the best is reported, as
``raw_s``); plain per-text ``encode`` is reported too.

Run: ``python benchmarks/bench_render.py`` (``--conversations N`` to change the size). The last line is a JSON
object with the figures; the targets are ``speedup_vs_cookbook >= 3`` and ``ratio_to_raw_tokenizer <= 1.5``.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import warnings
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    from tinker_cookbook.renderers import get_renderer as cookbook_get_renderer
    from transformers import AutoTokenizer

    tokenizer = offline_tokenizer("qwen3")
    hf = AutoTokenizer.from_pretrained(str(offline_tokenizer_dir("qwen3")), clean_up_tokenization_spaces=False)
    ours = get_renderer("qwen3", tokenizer)
    theirs = cookbook_get_renderer("qwen3", hf)
    data = conversations(args.conversations)
    as_dicts = [[{"role": m.role, "content": m.text()} for m in c.messages] for c in data]

    # the same tokens and weights first (on a sample)
    for conversation, messages in zip(data[:200], as_dicts[:200], strict=True):
        example = build_supervised_example(ours, conversation)
        model_input, weights = theirs.build_supervised_example(messages)
        reference = [t for chunk in model_input.chunks for t in chunk.tokens]
        assert example.tokens_T.tolist() == reference, "tokens differ from the cookbook"
        assert example.weights_T.tolist() == [float(w) for w in weights.tolist()], "weights differ"

    # warm-up
    for conversation in data[:200]:
        build_supervised_example(ours, conversation)

    def run_ours() -> None:
        build_supervised_batch(ours, data)

    def run_ours_one_by_one() -> None:
        for conversation in data:
            build_supervised_example(ours, conversation)

    def run_cookbook() -> None:
        for messages in as_dicts:
            theirs.build_supervised_example(messages)

    texts_per = [[m.text() for m in c.messages] for c in data]
    flat = [text for texts in texts_per for text in texts]

    def raw_batched(size: int) -> float:
        def run() -> None:
            for start in range(0, len(flat), size):
                tokenizer.encode_batch(flat[start : start + size])

        return _timed(run)

    def raw_per_conversation() -> None:
        for texts in texts_per:
            tokenizer.encode_batch(texts)

    def raw_each() -> None:
        for text in flat:
            tokenizer.encode(text)

    best: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(args.rounds):
        record("raw_batch8", raw_batched(8))
        record("ours", _timed(run_ours))
        record("raw_batch64", raw_batched(64))
        record("raw_per_conversation", _timed(raw_per_conversation))
        record("ours_one_by_one", _timed(run_ours_one_by_one))
    ours_s, one_by_one_s = best["ours"], best["ours_one_by_one"]
    cookbook_s = _timed(run_cookbook)
    raw_candidates = {
        "batch8": best["raw_batch8"],
        "batch64": best["raw_batch64"],
        "per_conversation": best["raw_per_conversation"],
    }
    raw_s = min(raw_candidates.values())
    raw_each_s = _timed(raw_each)
    tokens = sum(build_supervised_example(ours, c).length for c in data[:1000]) * len(data) / 1000
    print(f"conversations            {len(data)} ({len(flat)} messages, ~{tokens:,.0f} tokens)")
    print(f"tinkerflow render        {ours_s:.2f} s  ({len(data) / ours_s:,.0f} conversations/s, batched)")
    print(f"tinkerflow one by one    {one_by_one_s:.2f} s")
    print(f"tinker-cookbook render   {cookbook_s:.2f} s  ({len(data) / cookbook_s:,.0f} conversations/s)")
    for name, seconds in raw_candidates.items():
        print(f"raw tokenizer ({name:<16}) {seconds:.2f} s")
    print(f"raw tokenizer (per text)        {raw_each_s:.2f} s")
    print(f"speedup vs cookbook      {cookbook_s / ours_s:.2f}x   (target >= 3)")
    print(f"ratio to raw tokenizer   {ours_s / raw_s:.2f}x   (target <= 1.5)")
    emit(
        "render",
        {
            "conversations": len(data),
            "messages": len(flat),
            "renderer": "qwen3",
            "train_on": "last_assistant_message",
            "tinkerflow_s": round(ours_s, 3),
            "tinkerflow_one_by_one_s": round(one_by_one_s, 3),
            "cookbook_s": round(cookbook_s, 3),
            "raw_tokenizer_s": round(raw_s, 3),
            "raw_tokenizer_per_text_s": round(raw_each_s, 3),
            "speedup_vs_cookbook": round(cookbook_s / ours_s, 2),
            "ratio_to_raw_tokenizer": round(ours_s / raw_s, 2),
        },
    )


if __name__ == "__main__":
    main()
