"""Export of the embedded SmolLM2-135M-Instruct: time and peak memory of ``hf`` and ``gguf``, streamed vs loaded whole.

A rank-32 LoRA (``lm_head`` included: the default ``train_unembed=True``, so the ``hf`` export unties the embeddings)
is trained for ``--steps`` SL steps on a few rows of this repository's docs (not timed) and saved for sampling. Each
export then runs in a fresh interpreter, so its peak RSS is its own (``VmHWM`` of that process, which includes
the imports; the RSS right after the imports is reported beside it). Timed: the export call alone
(``merge.write_hf`` / ``gguf_export.write_gguf`` into an empty folder: base read or load, merge, cast or quantize,
write, config and tokenizer), the imports not included.

* ``streamed``: the base read tensor by tensor from its safetensors file (``stream=True``, the default);
* ``whole``: the base loaded whole first (``stream=False``, the former path, the strongest fair baseline: same merge
  and writer);
* ``peft``: (``hf`` float32 only) the usual recipe: ``from_pretrained`` the base, ``PeftModel.from_pretrained`` the
  ``peft`` export, ``merge_and_unload()``, ``save_pretrained`` model and tokenizer. Not a correct export of this
  checkpoint: on a tied base it merges the ``lm_head`` delta into the shared embedding (see docs/export.md), so it
  writes one matrix less.

``hf float32, 64 MiB shards`` writes the same export in shards of at most 64 MiB (``merge.SHARD_BYTES``; the default
5 GiB makes SmolLM2 one file): what the streamed path holds for a model of many shards.

Streamed and whole exports are checked to write identical weight files (sha256). Export configurations run in turn,
streamed and whole back to back. Usage: ``python benchmarks/bench_export.py [--steps N] [--repeats N] [--only
'hf float32' ...]`` (with repeats, the fastest time and the smallest peak of the runs). Prints a table and, last,
one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from _common import emit

EMBEDDED = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROOT = pathlib.Path(__file__).parents[1]
RANK = 32
#: (label, format, dtype or quant, shard size in MiB (None: the default 5 GiB, one file here), methods)
CONFIGS = (
    ("hf float32", "hf", "float32", None, ("streamed", "whole", "peft")),
    ("hf float32, 64 MiB shards", "hf", "float32", 64, ("streamed", "whole")),
    ("hf bfloat16", "hf", "bfloat16", None, ("streamed", "whole")),
    ("gguf f16", "gguf", "f16", None, ("streamed", "whole")),
    ("gguf q8_0", "gguf", "q8_0", None, ("streamed", "whole")),
)


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB. (Not ``ru_maxrss``: Linux carries the parent's
    peak over ``fork`` + ``exec`` into it, so a child started by a large parent reports the parent's peak.)"""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(job: dict[str, Any]) -> None:
    """One export in this (fresh) process; prints its figures as one JSON line."""
    import torch  # everything an export imports, before the clock and the RSS baseline
    import transformers.conversion_mapping  # transformers imports its modules when first used
    import transformers.models.auto.tokenization_auto
    import transformers.models.llama.modeling_llama  # noqa: F401

    from tinkerflow.shell.backends.local.embedded import embedded_model_dir
    from tinkerflow.shell.export import gguf_export, merge, stream  # noqa: F401
    from tinkerflow.shell.export.sources import resolve_source

    if job["method"] == "peft":
        import peft  # noqa: F401

    source = resolve_source(job["checkpoint"])
    out = pathlib.Path(job["out"])
    out.mkdir()
    imports = _status_mib("VmRSS")
    began = time.perf_counter()
    if job["method"] == "peft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = str(embedded_model_dir())
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, job["adapter"]).merge_and_unload()
        merged.save_pretrained(str(out))
        AutoTokenizer.from_pretrained(folder).save_pretrained(str(out))
    elif job["format"] == "hf":
        if job["shard_mib"] is not None:
            merge.SHARD_BYTES = job["shard_mib"] * 2**20
        merge.write_hf(source, out, getattr(torch, job["dtype"]), stream=job["method"] == "streamed")
    else:
        gguf_export.write_gguf(source, out, job["dtype"], stream=job["method"] == "streamed")
    seconds = time.perf_counter() - began
    peak = _status_mib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "imports_mib": imports}))


def _digest(folder: pathlib.Path) -> str:
    """sha256 over the weight files (names and bytes) of an export."""
    digest = hashlib.sha256()
    for file in sorted([*folder.glob("*.safetensors"), *folder.glob("*.gguf")]):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _written_mib(folder: pathlib.Path) -> float:
    files = [*folder.glob("*.safetensors"), *folder.glob("*.gguf")]
    return sum(file.stat().st_size for file in files) / 2**20


def _train(directory: pathlib.Path, steps: int) -> tuple[str, str]:
    """A rank-32 LoRA on the embedded model after ``steps`` SL steps: its checkpoint folder and its peft export."""
    from tinkerflow import AdamParams, Datum, ModelInput
    from tinkerflow.shell.backends.local import LocalBackend
    from tinkerflow.shell.backends.local.checkpoint import LocalPath
    from tinkerflow.shell.export import export_checkpoint

    text = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    with LocalBackend(checkpoint_dir=directory / "checkpoints", device="cpu") as local:
        client = local.create_lora_training_client(EMBEDDED, rank=RANK, seed=0).result()
        tokens = np.asarray(client.get_tokenizer().encode(text))
        rows = [tokens[start : start + 65] for start in range(0, 4 * 65, 65)]
        data = [
            Datum(
                model_input=ModelInput.from_tokens(row[:-1]),
                target_tokens_T=row[1:],
                weights_T=np.ones(row.size - 1, np.float32),
            )
            for row in rows
        ]
        for _ in range(steps):
            client.forward_backward(data, "cross_entropy").result()
            client.optim_step(AdamParams(learning_rate=1e-4)).result()
        path = client.save_weights_for_sampler("bench").result()
        checkpoint = LocalPath.parse(path).directory(local.checkpoint_dir)
    adapter = export_checkpoint(checkpoint, directory / "adapter", "peft").out
    return str(checkpoint), str(adapter)


def _run(job: dict[str, Any]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"export {job} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="SL steps before the checkpoint is saved")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each export (the best is reported)")
    parser.add_argument("--only", action="append", help="run only this export (e.g. 'hf float32'); repeatable")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(json.loads(arguments.worker))
        return
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as temp:
        directory = pathlib.Path(temp)
        began = time.perf_counter()
        checkpoint, adapter = _train(directory, arguments.steps)
        print(f"trained a rank-{RANK} LoRA for {arguments.steps} steps in {time.perf_counter() - began:.1f} s")
        for index, (label, fmt, dtype, shard_mib, methods) in enumerate(CONFIGS):
            if arguments.only and label not in arguments.only:
                continue
            digests: dict[str, str] = {}
            for method in methods:
                runs = []
                for repeat in range(arguments.repeats):
                    out = directory / f"export-{index}-{method}-{repeat}"
                    job = {
                        "checkpoint": checkpoint,
                        "adapter": adapter,
                        "out": str(out),
                        "format": fmt,
                        "dtype": dtype,
                        "method": method,
                        "shard_mib": shard_mib,
                    }
                    runs.append(_run(job))
                    written = _written_mib(out)
                    digests[method] = _digest(out)
                    if repeat < arguments.repeats - 1:
                        shutil.rmtree(out)
                row = {
                    "export": label,
                    "method": method,
                    "seconds": min(run["seconds"] for run in runs),
                    "peak_mib": min(run["peak_mib"] for run in runs),
                    "imports_mib": min(run["imports_mib"] for run in runs),
                    "written_mib": written,
                }
                rows.append(row)
                print(
                    f"{label:<26} {method:<9} {row['seconds']:6.1f} s  peak {row['peak_mib']:6.0f} MiB "
                    f"(imports {row['imports_mib']:4.0f})  written {written:5.0f} MiB",
                    flush=True,
                )
            if "whole" in digests and digests["streamed"] != digests["whole"]:
                raise RuntimeError(f"{label}: the streamed and whole exports wrote different weights")
    print()
    print("| export | method | time | peak RSS | peak RSS - imports | written |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| `{row['export']}` | {row['method']} | {row['seconds']:.1f} s | {row['peak_mib']:.0f} MiB "
            f"| {row['peak_mib'] - row['imports_mib']:.0f} MiB | {row['written_mib']:.0f} MiB |"
        )
    print("(streamed and whole wrote identical weight files for every export)")
    emit("export", {"rank": RANK, "steps": arguments.steps, "rows": rows})


if __name__ == "__main__":
    main()
