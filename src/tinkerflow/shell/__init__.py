"""The imperative shell: everything that touches the world (backends, checkpoints, run directories).

Importing this package stays light; torch, transformers, peft and the tinker SDK load only in the modules that need
them (:mod:`tinkerflow.shell.local`, :mod:`tinkerflow.shell.tinker_backend`).
"""
