"""The local backend (shell): Tinker's semantics on this machine with torch + transformers + LoRA."""

from tinkerflow.shell.backends.local.backend import LocalBackend, LocalSamplingClient, LocalTrainingClient

__all__ = ["LocalBackend", "LocalSamplingClient", "LocalTrainingClient"]
