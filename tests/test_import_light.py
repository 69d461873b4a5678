"""`import tinkerflow` must not pull in torch, transformers or the tinker client."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "tinker", "peft", "tokenizers", "hypothesis")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(output.strip().splitlines()[-1]))


def test_import_tinkerflow_is_light() -> None:
    loaded = _modules_after("import tinkerflow; import tinkerflow.serde")
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert heavy == [], f"import tinkerflow loaded heavy modules: {heavy}"


def test_interop_module_imports_tinker_lazily() -> None:
    loaded = _modules_after("import tinkerflow.interop")
    assert "tinker" not in loaded
    loaded = _modules_after(
        "import tinkerflow.interop as i, tinkerflow as t; "
        "i.datum_to_tinker(t.Datum(t.ModelInput.from_tokens([1]), [2]))"
    )
    assert "tinker" in loaded


def test_tokenizer_modules_and_the_shell_package_are_light() -> None:
    loaded = _modules_after(
        "import tinkerflow.tokenizers, tinkerflow.vocabularies, tinkerflow.shell, tinkerflow.shell.io.tokenizers"
    )
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert heavy == [], f"the tokenizer modules loaded heavy modules at import: {heavy}"
