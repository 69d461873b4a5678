"""Pipeline sources that read files (shell: reads the file system, never writes).

:class:`JsonlSource` is a :class:`tinkerflow.pipeline.Source` over a JSON-lines file: random access by line, so
shuffles stay cheap and restores O(1). The pipeline values that read it stay pure; only this reader touches
the disk (one pass in blocks to index the lines, ``os.pread`` to read them).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from tinkerflow.errors import ConfigError, ValidationError

__all__ = ["JsonlSource", "index_lines"]

_BLOCK = 1 << 24


def _whitespace(data: np.ndarray) -> np.ndarray:
    spaces: np.ndarray = (data == 32) | ((data >= 9) & (data <= 13))
    return spaces


def index_lines(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start byte, end byte, 1-based line number) of every non-blank line of a file (a line of only ASCII
    whitespace is blank, as ``bytes.strip`` says). The end excludes the newline.

    The file is read in blocks of 16 MiB into one buffer (not mapped: mapped pages would count in the process's
    resident memory), so indexing holds the index (24 bytes a line) and one block."""
    size = path.stat().st_size
    newlines: list[np.ndarray] = []
    spaced: list[np.ndarray] = []  # positions of whitespace bytes that start a line (maybe a blank line)
    buffer = bytearray(_BLOCK)
    previous = 10  # the byte before the file: as if after a newline
    with open(path, "rb") as handle:
        offset = 0
        while count := handle.readinto(buffer):
            block = np.frombuffer(buffer, dtype=np.uint8, count=count)
            newlines.append(np.flatnonzero(block == 10) + offset)
            after_newline = np.empty(count, dtype=bool)
            after_newline[0] = previous == 10
            after_newline[1:] = block[:-1] == 10
            spaced.append(np.flatnonzero(after_newline & _whitespace(block)) + offset)
            previous = int(block[-1])
            offset += count
            del block  # the buffer is reused
    ends = np.concatenate([*newlines, np.array([size], dtype=np.int64)]).astype(np.int64)
    starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1] + 1])
    numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
    keep = ends > starts
    candidates = np.flatnonzero(np.isin(starts, np.concatenate([np.zeros(0, dtype=np.int64), *spaced])) & keep)
    if len(candidates):
        with open(path, "rb") as handle:
            for line in candidates:
                handle.seek(int(starts[line]))
                if not handle.read(int(ends[line] - starts[line])).strip():
                    keep[line] = False
    return starts[keep], ends[keep], numbers[keep]


class JsonlSource:
    """A JSON-lines file, one JSON object per non-blank line, read lazily: a pipeline :class:`Source`.

    The first use indexes the line offsets (one pass over the file, 24 bytes per line kept); reads then use
    ``os.pread``, so worker processes can share the descriptor. Items are ``dict[str, object]``; a line that is
    not a JSON object fails the read with its file and line named (and obeys the pipeline's error policy).
    Decode items into records with a first stage (e.g. ``functools.partial(tinkerflow.serde.structure,
    cls=Conversation)``).
    """

    __slots__ = ("_fd", "_index", "_path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = pathlib.Path(path)
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._fd: int | None = None

    @property
    def path(self) -> pathlib.Path:
        return self._path

    @property
    def item_type(self) -> object:
        return dict[str, object]

    def _lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._index is None:
            if not self._path.is_file():
                raise ConfigError("JsonlSource", "path", f"{self._path} is not a readable file.")
            self._index = index_lines(self._path)
        return self._index

    def __len__(self) -> int:
        return len(self._lines()[0])

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDONLY)
        return self._fd

    def read(self, indices: Sequence[int]) -> list[dict[str, object]]:
        starts, ends, _ = self._lines()
        fd = self._descriptor()
        if isinstance(indices, range) and indices.step == 1 and len(indices) > 1:
            first, last = indices.start, indices.stop - 1
            base = int(starts[first])
            block = os.pread(fd, int(ends[last]) - base, base)
            begins = (starts[first : last + 1] - base).tolist()
            finishes = (ends[first : last + 1] - base).tolist()
            texts = [block[begin:end] for begin, end in zip(begins, finishes, strict=True)]
        else:
            texts = [os.pread(fd, int(ends[i]) - int(starts[i]), int(starts[i])) for i in indices]
        items = [json.loads(text) for text in texts]
        for item in items:
            if not isinstance(item, dict):
                raise ValidationError("JsonlSource", "line", f"expected a JSON object, got JSON {type(item).__name__}.")
        return items

    def location(self, index: int) -> str:
        return f"{self._path}:{int(self._lines()[2][index])}"

    def describe(self) -> str:
        return f"{self._path}: {len(self)} JSON lines"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, object]:
        return {"path": str(self._path), "index": self._index}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._path = pathlib.Path(str(state["path"]))
        self._index = state["index"]  # type: ignore[assignment]  # written by __getstate__ above
        self._fd = None

    def __repr__(self) -> str:
        return f"JsonlSource({str(self._path)!r})"
