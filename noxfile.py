"""nox sessions for tinkerflow.

Every session runs in the current environment (``venv_backend="none"``): ``scripts/bootstrap.sh`` builds one
pinned virtualenv (``.venv``) with everything, and ``.venv/bin/nox -s <session>`` uses it. This keeps CI to one
install of torch and friends instead of one per session.

Sessions: ``lint``, ``typecheck``, ``tests`` (default test run, no slow tests), ``slow`` (tests on the real
embedded model), ``conformance`` (token-exact differential tests against reference renderers), ``bench``.
"""

from __future__ import annotations

import os
import pathlib
import sys

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "none"

ROOT = pathlib.Path(__file__).parent
PY_PATHS = ["src", "tests", "benchmarks", "examples", "scripts", "noxfile.py"]


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.run(sys.executable, "-m", "ruff", "check", *PY_PATHS)
    session.run(sys.executable, "-m", "ruff", "format", "--check", *PY_PATHS)


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/ (configured in pyproject.toml)."""
    session.run(sys.executable, "-m", "mypy")


def _pytest(session: nox.Session, *args: str) -> None:
    env = {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci"), "PYTHONHASHSEED": "0"}
    session.run(sys.executable, "-m", "pytest", *args, *session.posargs, env=env)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The default test run: everything but slow and conformance tests, derandomized hypothesis (profile ci)."""
    _pytest(session, "-m", "not slow and not conformance", "-n", "2", "--dist", "loadfile")


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """Tests that use the real embedded model (SmolLM2-135M-Instruct)."""
    _pytest(session, "-m", "slow")


@nox.session(venv_backend="none")
def conformance(session: nox.Session) -> None:
    """Token-exact differential tests against tinker-cookbook, tml-renderers and official chat templates."""
    _pytest(session, "-m", "conformance", "-n", "2", "--dist", "loadfile")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Run every benchmark in benchmarks/ (each prints one JSON object as its last line)."""
    scripts = sorted(path for path in (ROOT / "benchmarks").glob("bench_*.py"))
    selected = [path for path in scripts if not session.posargs or path.stem in session.posargs]
    for script in selected:
        session.run(sys.executable, str(script), env={"PYTHONHASHSEED": "0"})
