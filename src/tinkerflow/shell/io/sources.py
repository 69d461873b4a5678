"""Pipeline sources that read files (shell: reads the file system, never writes).

:class:`JsonlSource` is a :class:`tinkerflow.pipeline.Source` over a JSON-lines file: random access by line, so
shuffles stay cheap and restores O(1). The pipeline values that read it stay pure; only this reader touches
the disk (``mmap`` to index the lines once, ``os.pread`` to read them).
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from tinkerflow.errors import ConfigError, ValidationError

__all__ = ["JsonlSource", "index_lines"]

_BLOCK = 1 << 24


def index_lines(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start byte, end byte, 1-based line number) of every non-blank line of a file (a line of only ASCII
    whitespace is blank, as ``bytes.strip`` says). The end excludes the newline."""
    size = path.stat().st_size
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        data = np.frombuffer(mapped, dtype=np.uint8)
        try:
            newlines = [np.flatnonzero(data[i : i + _BLOCK] == 10) + i for i in range(0, size, _BLOCK)]
            ends = np.concatenate([*newlines, np.array([size], dtype=np.int64)]).astype(np.int64)
            starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1] + 1])
            numbers = np.arange(1, len(starts) + 1, dtype=np.int64)
            lengths = ends - starts
            keep = lengths > 0
            first = data[np.minimum(starts, size - 1)]
            maybe_blank = (first == 32) | ((first >= 9) & (first <= 13))  # a blank line starts with whitespace
            for line in np.flatnonzero(keep & maybe_blank):
                if not bytes(data[starts[line] : ends[line]]).strip():
                    keep[line] = False
        finally:
            del data  # release the buffer before the map closes
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
