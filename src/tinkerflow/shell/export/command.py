"""``tinkerflow export``: the command line of :func:`tinkerflow.shell.export.export_checkpoint`. (Shell.)"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tinkerflow.shell.export import DTYPES, FORMATS, GGUF_QUANTS, export_checkpoint

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinkerflow export",
        description="Export a checkpoint as a Hugging Face model folder (LoRA merged into the base weights), "
        "a PEFT adapter or a GGUF file for llama.cpp / ollama (merged). A tinker:// checkpoint is downloaded "
        "first (TINKER_BASE_URL, TINKER_API_KEY). "
        "See docs/export.md.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="local://<run>/<weights|sampler_weights|external_weights>/<name>, a checkpoint folder (with "
        "checkpoint.json), a run directory (its latest checkpoint unless --step or --name) or "
        "tinker://<run>/<weights|sampler_weights|external_weights>/<name> (downloaded through the tinker SDK)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not exist)")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="hf: merged model; peft: the adapter; gguf: merged model as model.gguf (llama, qwen3)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="dtype of the written tensors (default: float32 for hf, the adapter's own for peft; not for gguf)",
    )
    parser.add_argument(
        "--quant",
        choices=GGUF_QUANTS,
        default=None,
        help="gguf: type of the 2-D weights (default f16; norms stay f32; q8_0 rows not divisible by 32 are f16)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="where local:// paths resolve (default $TINKERFLOW_CACHE/checkpoints; a run's is <run dir>/checkpoints)",
    )
    parser.add_argument("--step", type=int, default=None, help="in a run directory: the checkpoint of step N")
    parser.add_argument("--name", default=None, help="in a run directory: the checkpoint of this name")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="tinker:// sources: the Tinker API (default $TINKER_BASE_URL; the key is $TINKER_API_KEY)",
    )
    parser.add_argument(
        "--keep-download",
        default=None,
        metavar="DIR",
        help="tinker:// sources: download into DIR (must not exist) and keep it (default: a temporary folder)",
    )
    parser.add_argument("--no-progress", action="store_true", help="draw no progress bar")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``tinkerflow export`` with ``argv`` (the arguments after ``export``); returns the exit status.

    Raises:
        TinkerflowError: the export was refused (the caller prints it).
    """
    args = _parser().parse_args(list(argv))
    from tinkerflow.shell.export.sources import DownloadOptions, download_options  # loads torch: not for --help

    progress = not args.no_progress and sys.stderr.isatty()
    download = DownloadOptions(base_url=args.base_url, progress=progress, keep=args.keep_download)
    with download_options(download):
        result = export_checkpoint(
            args.checkpoint,
            args.out,
            args.format,
            args.dtype,
            checkpoint_dir=args.checkpoint_dir,
            step=args.step,
            name=args.name,
            overwrite=args.overwrite,
            progress=progress,
            quant=args.quant,
        )
    size = result.total_bytes / 2**20
    print(f"exported {result.source} ({result.base_model}) as {result.format} ({result.dtype}) to {result.out}")
    print(f"  weights: {', '.join(result.files)} ({size:.1f} MiB)")
    if result.untied:
        detail = "output.weight written beside token_embd" if result.format == "gguf" else "tie_word_embeddings=false"
        print(f"  the output layer had a LoRA adapter on tied embeddings: written untied ({detail})")
    if result.format == "gguf":
        print(f"  load: llama-cli -m {str(result.out / result.files[0])!r} (or an ollama Modelfile: FROM <that file>)")
    elif result.format == "peft":
        print(f"  load: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), {str(result.out)!r})")
    else:
        print(f"  load: AutoModelForCausalLM.from_pretrained({str(result.out)!r})")
    return 0
