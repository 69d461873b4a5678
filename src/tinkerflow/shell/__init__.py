"""The imperative shell: everything that touches the world (backends, checkpoints, run directories).

Importing this package stays light; torch, transformers, peft and the tinker SDK load only in the modules that need
them (:mod:`tinkerflow.shell.backends.local.backend`, :mod:`tinkerflow.shell.backends.tinker`).
"""
