"""Print the hostile suite's cases by boundary as a markdown table (for docs/conventions.md and issue notes).

Runs ``pytest tests/hostile --collect-only -q`` (the plugin ``tests/hostile/counting.py`` prints the collected
cases by boundary, xfail cases apart) and turns its summary line into a table::

    python scripts/hostile_counts.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence

PREFIX = "hostile inputs by boundary (collected): "


def parse_counts(text: str) -> dict[str, int]:
    """``files 3, rows 5`` -> ``{"files": 3, "rows": 5}`` (``none`` -> ``{}``)."""
    return {name: int(count) for name, count in re.findall(r"([a-z]+) (\d+)", text)}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = [sys.executable, "-m", "pytest", "tests/hostile", "--collect-only", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run([*command, *arguments], capture_output=True, text=True, check=False)
    line = next((line for line in done.stdout.splitlines() if line.startswith(PREFIX)), None)
    if done.returncode != 0 or line is None:
        print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
        print("error: the hostile suite could not be collected (output above).", file=sys.stderr)
        return 1
    passing_text, _, xfail_text = line[len(PREFIX) :].partition("; xfail (known bugs): ")
    passing = parse_counts(passing_text.split(" (total")[0])
    xfail = parse_counts(xfail_text)
    print("| boundary | cases | known bugs (xfail) |")
    print("|---|---:|---:|")
    for name in dict.fromkeys([*passing, *xfail]):
        print(f"| {name} | {passing.get(name, 0)} | {xfail.get(name, 0)} |")
    print(f"| **total** | **{sum(passing.values())}** | **{sum(xfail.values())}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
