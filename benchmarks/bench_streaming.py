"""SL data larger than memory: peak memory and throughput of streamed rows against rows held in memory.

A JSONL file of ``N`` synthetic chat conversations (a system prompt, a question of about 25 words and an answer of
about 40: 470 bytes a line) is prepared for SL with the ``qwen3`` renderer over the offline Qwen3 tokenizer, then
one epoch of its batches (``batch_size=32``, seeded shuffle) is read, as the SL loop reads them:

* ``streamed``: ``prepare_sl_data`` of the file (the default for file sources): every row is checked once, then
  a batch's rows are read from the file and rendered when the pipeline asks for them;
* ``in memory``: the loader that holds every row (``sl_data(load_split(...))``, the former path and the strongest
  fair baseline: the same parser, renderer and pipeline), all rows parsed and all datums rendered up front.

Each (mode, N) runs in a fresh interpreter, so its peak is its own: ``VmHWM`` minus the RSS after the imports,
the tokenizer load and a warm-up render of one 512-row chunk (which brings up the tokenizer's threads and
buffers). The peak therefore includes the tokenizer's transient memory of one chunk, the same in both modes;
``held`` is the RSS at the end (the data still held once an epoch was read) minus the same base. Timed:
``prepare`` (the check pass, or load and render) and ``epoch`` (reading every batch of one epoch). Both modes are
checked to give the same batches (a sha256 over the tokens and weights of every batch, in order).

Usage: ``python benchmarks/bench_streaming.py [--rows 10000 100000 1000000] [--modes streamed "in memory"]``.
Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile
import time

from _common import emit

WORDS = [
    "the",
    "model",
    "reads",
    "each",
    "row",
    "once",
    "and",
    "keeps",
    "only",
    "what",
    "it",
    "needs",
    "while",
    "a",
    "batch",
    "is",
    "trained",
    "on",
    "the",
    "next",
    "one",
    "so",
    "memory",
    "stays",
    "flat",
    "as",
    "the",
    "data",
    "grows",
    "from",
    "thousands",
    "to",
    "millions",
    "of",
    "rows",
]


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def _row(i: int) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": f"Question {i}: {_text(i, 25)}?"},
            {"role": "assistant", "content": f"Answer {i}: {_text(i + 1, 40)}."},
        ]
    }


def write_rows(path: pathlib.Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps(_row(i)) + "\n")


def _status_mib(field: str) -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(path: str, mode: str) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from tinkerflow.chat_format import parse_chat_line
    from tinkerflow.config import SLConfig
    from tinkerflow.render import build_supervised_batch, get_renderer
    from tinkerflow.shell.io.data import chat_format, load_split
    from tinkerflow.shell.io.tokenizers import offline_tokenizer
    from tinkerflow.shell.recipes.sl import prepare_sl_data, train_pipeline
    from tinkerflow.sl_data import sl_data

    renderer = get_renderer("qwen3", offline_tokenizer("qwen3"))
    config = SLConfig(train_data=path, test_fraction=0.001, batch_size=32, max_length=512, learning_rate=1e-4)
    warm = [parse_chat_line(json.dumps(_row(i)), "warm-up") for i in range(512)]
    build_supervised_batch(renderer, warm, config.train_on)  # the tokenizer's threads and buffers come up here
    del warm
    base = _status_mib("VmRSS")
    start = time.perf_counter()
    if mode == "streamed":
        data = prepare_sl_data(config, renderer)
    else:
        data = sl_data(load_split(config, chat_format()), renderer, config)
    prepared = time.perf_counter()
    digest = hashlib.sha256()
    batches = 0
    for batch in train_pipeline(data, config).iterate():
        for datum in batch:
            digest.update(datum.model_input.to_tokens().tobytes())
            if datum.weights_T is not None:
                digest.update(datum.weights_T.tobytes())
        batches += 1
    done = time.perf_counter()
    record = {
        "rows": len(data.train) + len(data.test),
        "train_rows": len(data.train),
        "batches": batches,
        "prepare_s": prepared - start,
        "epoch_s": done - prepared,
        "peak_mib": _status_mib("VmHWM") - base,
        "held_mib": _status_mib("VmRSS") - base,
        "base_mib": base,
        "sha256": digest.hexdigest(),
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["streamed", "in memory"])
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.rows:
            path = pathlib.Path(folder) / f"rows-{count}.jsonl"
            write_rows(path, count)
            size_mb = path.stat().st_size / 1e6
            digests = set()
            for mode in args.modes:
                output = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), mode], check=True, capture_output=True, text=True
                ).stdout
                record = {"mode": mode, "file_mb": size_mb, **json.loads(output.strip().splitlines()[-1])}
                digests.add(record.pop("sha256"))
                results.append(record)
                rows = record["rows"]
                print(
                    f"{count:>9} rows ({size_mb:7.1f} MB) {mode:>10}: prepare {record['prepare_s']:7.1f} s, "
                    f"epoch {record['epoch_s']:7.1f} s ({record['train_rows'] / record['epoch_s']:8.0f} rows/s), "
                    f"peak {record['peak_mib']:8.1f} MiB, held {record['held_mib']:8.1f} MiB "
                    f"({record['held_mib'] * 2**20 / rows:6.0f} B/row)",
                    flush=True,
                )
            if len(digests) != 1:
                raise SystemExit(f"{count} rows: the modes gave different batches")
            path.unlink()
    emit("streaming", {"results": results})


if __name__ == "__main__":
    main()
