"""The imperative shell: everything that touches the world (backends, checkpoints, run directories, tokenizer files).

Importing this package stays light; torch, transformers, peft and the tinker SDK load only in the modules that need
them (:mod:`tinkerflow.shell.backends.local.backend`, :mod:`tinkerflow.shell.backends.tinker`).

Importing it also applies the environment's runtime-check switch, once: ``TINKERFLOW_RUNTIME_CHECKS=0`` (or
``false`` / ``no``) calls :func:`tinkerflow.arrays.set_runtime_checks` with ``False``. The core never reads the
environment; every backend, recipe and CLI command imports this package, so shell users keep the variable.
"""

from __future__ import annotations

import os
from typing import Final

from tinkerflow.arrays import set_runtime_checks

#: The environment variable that turns the core's runtime shape/dtype checks off (``0``, ``false`` or ``no``).
RUNTIME_CHECKS_ENV: Final[str] = "TINKERFLOW_RUNTIME_CHECKS"

_OFF: Final[frozenset[str]] = frozenset({"0", "false", "no"})


def apply_runtime_checks_env() -> None:
    """Turn the core's runtime checks off when :data:`RUNTIME_CHECKS_ENV` says so (other values change nothing)."""
    if os.environ.get(RUNTIME_CHECKS_ENV, "1").strip().lower() in _OFF:
        set_runtime_checks(False)


apply_runtime_checks_env()
