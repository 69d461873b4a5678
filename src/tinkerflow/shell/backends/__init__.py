"""Backends (shell): the protocol loops see, the Tinker service (:mod:`.tinker`) and the local engine (:mod:`.local`).

Importing this package stays light: torch and the tinker SDK load only with :mod:`.local` and :mod:`.tinker`.
"""
