"""``tinkerflow serve``: the command line of the server. (Shell.)"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence
from typing import Final

from tinkerflow.shell.io.tokenizers import default_cache_dir
from tinkerflow.shell.serve.server import DEFAULT_KEY, ServerConfig, serve

__all__ = ["KEY_ENV", "main"]

#: The environment variable the server's key is read from when ``--api-key`` is not given.
KEY_ENV: Final = "TINKERFLOW_SERVE_KEY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinkerflow serve",
        description="Serve Tinker's API (tinker SDK 0.38) on this machine with the local backend. Point the SDK at "
        "it with TINKER_BASE_URL=http://HOST:PORT and TINKER_API_KEY=<the key>. See docs/serve.md.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="serve SOURCE (a model folder, tiny spec or model name) under the Tinker name NAME; repeatable",
    )
    parser.add_argument(
        "--only-listed-models",
        action="store_true",
        help="serve only the --model entries (by default the embedded SmolLM2 and the tiny models are served too)",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="folder of the server's database and checkpoints (default $TINKERFLOW_CACHE/serve); reuse it to keep "
        "sessions, runs and checkpoints across restarts",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"the key requests must carry (default ${KEY_ENV}, else {DEFAULT_KEY!r}); must start with 'tml-'",
    )
    parser.add_argument("--max-pending", type=int, default=256, help="requests in flight before 429 (default 256)")
    parser.add_argument("--max-body-mb", type=int, default=256, help="largest request body in MiB (default 256)")
    parser.add_argument(
        "--max-samplers", type=int, default=16, help="sampling sessions kept loaded at once (default 16)"
    )
    parser.add_argument("--device", default=None, help="torch device for the local backend (default: CUDA if any)")
    parser.add_argument(
        "--install-tokenizers",
        nargs="?",
        const="",
        default=None,
        metavar="HF_HOME",
        help="write each served model's tokenizer into a Hugging Face cache (default <store>/hf-home) so "
        "AutoTokenizer.from_pretrained(<model name>) works offline, then print the HF_HOME to export",
    )
    parser.add_argument(
        "--exit-after", type=float, default=None, metavar="SECONDS", help="stop by itself after SECONDS (for scripts)"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Run ``tinkerflow serve`` with ``argv`` (the arguments after ``serve``); returns the exit status."""
    args = _parser().parse_args(list(argv))
    key = args.api_key or os.environ.get(KEY_ENV) or DEFAULT_KEY
    store = args.store or str(default_cache_dir() / "serve")
    config = ServerConfig(
        store=store,
        host=args.host,
        port=args.port,
        api_key=key,
        models=tuple(args.model),
        only_listed_models=args.only_listed_models,
        max_pending=args.max_pending,
        max_body_mb=args.max_body_mb,
        max_samplers=args.max_samplers,
        device=args.device,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: other machines can reach this server; keep the key secret.")
    stop = threading.Event()
    if args.exit_after is not None:
        timer = threading.Timer(args.exit_after, stop.set)
        timer.daemon = True
        timer.start()
    hf_home = None
    if args.install_tokenizers is not None:
        hf_home = args.install_tokenizers or str(config.store / "hf-home")
    serve(config, stop=stop, announce=True, hf_home=hf_home)
    return 0
