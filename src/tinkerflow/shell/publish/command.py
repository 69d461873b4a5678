"""``tinkerflow publish``: the command line of :func:`tinkerflow.shell.publish.publish`. (Shell.)"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinkerflow publish",
        description="Write a model card (README.md: base model and its license, data files with sha256, config, "
        "metrics and a chart of the training curves, how to load it) into an export folder of `tinkerflow export`, "
        "then upload the folder to the Hugging Face hub. The token is HF_TOKEN or your `hf auth login`. "
        "See docs/publish.md.",
    )
    parser.add_argument("folder", metavar="DIR", help="a folder written by `tinkerflow export` (holds export.json)")
    parser.add_argument("--repo", required=True, metavar="NAME", help="the hub repository, namespace/name")
    parser.add_argument(
        "--run",
        default=None,
        metavar="RUN_DIR",
        help="the run directory of the checkpoint (default: the one export.json's source names)",
    )
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the card and list the files to upload; upload nothing"
    )
    parser.add_argument(
        "--overwrite-card", action="store_true", help="replace a README.md that tinkerflow publish did not write"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``tinkerflow publish`` with ``argv`` (the arguments after ``publish``); returns the exit status.

    Raises:
        TinkerflowError: publishing was refused or failed (the caller prints it).
    """
    args = _parser().parse_args(list(argv))
    from tinkerflow.shell.publish.publish import publish

    result = publish(
        args.folder,
        args.repo,
        run_dir=args.run,
        private=args.private,
        dry_run=args.dry_run,
        overwrite_card=args.overwrite_card,
    )
    print(f"model card: {result.card}" + (f" (chart: {result.chart.name})" if result.chart is not None else ""))
    print(f"run directory: {result.run_dir if result.run_dir is not None else 'not found'}")
    for note in result.notes:
        print(f"note: {note}")
    if result.uploaded:
        print(f"uploaded {len(result.files)} files to {result.url}")
    else:
        print(f"dry run: would upload {len(result.files)} files to {result.url}:")
        for name in result.files:
            print(f"  {name}")
    return 0
