"""Hostile files: JSONL data files that are not JSON, nest too deeply, hold lone surrogates, binary garbage, a
byte-order mark, another encoding, or are missing, folders, pipes or broken links; config files of the command
line that are not JSON objects. Each is refused with one exact typed error naming ``file:line`` and the field
(``line`` for a line that cannot be read at all), or for the command line exit status 2 and a one-line error
without a traceback."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.hostile.support import assert_cli_error, raises_exactly

from tinkerflow.chat_format import ChatFormatError
from tinkerflow.errors import ConfigError
from tinkerflow.preference.data import PreferenceFormatError
from tinkerflow.rows import DataError
from tinkerflow.shell.io.data import load_chat_jsonl, load_preference_jsonl

pytestmark = pytest.mark.hostile("files")

GOOD_CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
GOOD_PAIR = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})


# (id, the file's bytes given a good line, the line number named, the field named)
CONTENTS: list[tuple[str, Callable[[str], bytes], int, str]] = [
    ("binary garbage", lambda good: bytes(range(256)) * 4, 1, "line"),
    ("utf-16", lambda good: good.encode("utf-16"), 1, "line"),
    ("byte-order mark", lambda good: b"\xef\xbb\xbf" + good.encode() + b"\n", 1, "line"),
    ("invalid utf-8", lambda good: good.encode()[:-2] + b'\xc3\x28"}\n', 1, "line"),
    ("overlong utf-8", lambda good: good.encode()[:-2] + b'\xc0\xaf"}\n', 1, "line"),
    ("nul byte", lambda good: good.encode()[:10] + b"\x00" + good.encode()[10:] + b"\n", 1, "line"),
    ("truncated last line", lambda good: (good + "\n" + good[:-7]).encode(), 2, "line"),
    ("bad second line", lambda good: (good + "\n{bad\n").encode(), 2, "line"),
    ("trailing garbage", lambda good: (good + " xyz\n").encode(), 1, "line"),
    ("two objects on a line", lambda good: (good + good + "\n").encode(), 1, "line"),
    ("cr line ends", lambda good: (good + "\r" + good + "\r").encode(), 1, "line"),
    ("deep arrays", lambda good: b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", 1, "line"),
    ("deep objects", lambda good: b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n", 1, "line"),
    ("blank then bad", lambda good: b"\n\n   \n{\n", 4, "line"),
]


def _write(tmp_path: pathlib.Path, data: bytes) -> pathlib.Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("content", "line", "field"), [c[1:] for c in CONTENTS], ids=[c[0] for c in CONTENTS])
def test_a_bad_chat_file(tmp_path: pathlib.Path, content: Callable[[str], bytes], line: int, field: str) -> None:
    path = _write(tmp_path, content(GOOD_CHAT))
    raises_exactly(lambda: load_chat_jsonl(path), ChatFormatError, field, f"{path}:{line}")


@pytest.mark.parametrize(("content", "line", "field"), [c[1:] for c in CONTENTS], ids=[c[0] for c in CONTENTS])
def test_a_bad_preference_file(tmp_path: pathlib.Path, content: Callable[[str], bytes], line: int, field: str) -> None:
    path = _write(tmp_path, content(GOOD_PAIR))
    raises_exactly(lambda: load_preference_jsonl(path), PreferenceFormatError, field, f"{path}:{line}")


# rows of a readable file that are not rows: (id, line, chat field, preference field)
NOT_ROWS: list[tuple[str, str, str, str]] = [
    ("array", "[1, 2]", "messages[0]", "row"),
    ("string", '"hello"', "messages", "row"),
    ("null", "null", "messages", "row"),
    ("number", "5", "messages", "row"),
    ("NaN literal", '{"messages": NaN}', "messages", "row"),
    ("messages null", '{"messages": null}', "messages", "row"),
    ("messages object", '{"messages": {"role": "user"}}', "messages", "row"),
    ("messages empty", '{"messages": []}', "messages", "row"),
    ("escaped surrogate", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content", "row"),
]


@pytest.mark.parametrize(("line", "chat_field", "pair_field"), [c[1:] for c in NOT_ROWS], ids=[c[0] for c in NOT_ROWS])
def test_a_line_that_is_json_but_no_row(tmp_path: pathlib.Path, line: str, chat_field: str, pair_field: str) -> None:
    path = _write(tmp_path, (line + "\n").encode())
    raises_exactly(lambda: load_chat_jsonl(path), ChatFormatError, chat_field, f"{path}:1")
    raises_exactly(lambda: load_preference_jsonl(path), PreferenceFormatError, pair_field, f"{path}:1")


@pytest.mark.parametrize(
    ("loader", "kind"),
    [
        pytest.param(load_chat_jsonl, ChatFormatError, id="chat"),
        pytest.param(load_preference_jsonl, PreferenceFormatError, id="preference"),
    ],
)
def test_an_integer_of_5000_digits(
    tmp_path: pathlib.Path, loader: Callable[[pathlib.Path], object], kind: type
) -> None:
    """``json.loads`` raises a plain ValueError past Python's 4300-digit limit (once a raw ValueError, fixed in
    issue 15)."""
    path = _write(tmp_path, b'{"messages": [{"role": "user", "content": ' + b"9" * 5000 + b"}]}\n")
    raises_exactly(lambda: loader(path), kind, "line", f"{path}:1")


def test_a_row_with_a_duplicated_key(tmp_path: pathlib.Path) -> None:
    """Once read silently, the last key winning: the row trained on other messages than it seemed to (issue 15)."""
    first = json.loads(GOOD_CHAT)["messages"]
    second = [{"role": "user", "content": "other"}, {"role": "assistant", "content": "reply"}]
    line = '{"messages": ' + json.dumps(first) + ', "messages": ' + json.dumps(second) + "}\n"
    path = _write(tmp_path, line.encode())
    raises_exactly(lambda: load_chat_jsonl(path), ChatFormatError, "messages", f"{path}:1")


def _paths(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    return {
        "missing": tmp_path / "nope.jsonl",
        "folder": tmp_path,
        "pipe": fifo,
        "link loop": loop,
        "dangling": dangling,
    }


@pytest.mark.parametrize("name", ["missing", "folder", "pipe", "link loop", "dangling"])
def test_a_data_path_that_is_no_file(tmp_path: pathlib.Path, name: str) -> None:
    path = _paths(tmp_path)[name]
    raises_exactly(lambda: load_chat_jsonl(path), DataError, "path", str(path))
    raises_exactly(lambda: load_preference_jsonl(path), ConfigError, "path", "load_preference_jsonl")


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=200).filter(lambda data: data.strip(b" \t\r\n\x0b\x0c")))
def test_any_bytes_are_rows_or_one_typed_error(tmp_path: pathlib.Path, data: bytes) -> None:
    """Whatever bytes a file holds, reading it ends in rows or a typed error naming a line: never anything else."""
    path = tmp_path / "any.jsonl"
    path.write_bytes(data)
    for loader, kind in ((load_chat_jsonl, ChatFormatError), (load_preference_jsonl, PreferenceFormatError)):
        try:
            loader(path)
        except kind as error:
            assert error.where.startswith(f"{path}:"), error


# -- config files of the command line ------------------------------------------------------------------------------

CONFIG_FILES: list[tuple[str, bytes | None, str]] = [
    ("missing", None, "config file not found"),
    ("empty", b"", "not valid JSON"),
    ("not json", b"batch_size: 3\n", "not valid JSON"),
    ("array", b'[{"train_data": "d.jsonl"}]', "a config must be a JSON object"),
    ("string", b'"d.jsonl"', "a config must be a JSON object"),
    ("null", b"null", "a config must be a JSON object"),
    ("truncated", b'{"train_data": "d.jsonl", ', "not valid JSON"),
    ("duplicated key", b'{"run_dir": "a", "seed": 1, "run_dir": "b"}', "the key 'run_dir' is written twice"),
    ("huge integer", b'{"seed": ' + b"9" * 5000 + b"}", "not readable JSON"),
]
# bugs the suite found, fixed since (issue 15): (id, bytes, message, what went wrong before the fix)
CONFIG_FIXED: list[tuple[str, bytes | None, str, str]] = [
    ("binary", bytes(range(256)), "not valid UTF-8", "raw UnicodeDecodeError from _read_config_file (cli.py)"),
    ("folder", b"<folder>", "not a file", "raw IsADirectoryError from _read_config_file (cli.py)"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "too deeply", "raw RecursionError from json.loads in _read_config_file"),
    (
        "surrogate",
        b"<surrogate>",
        "run_dir",
        "raw UnicodeEncodeError when the resolved config is printed (the value is never checked)",
    ),
]


def _config_path(tmp_path: pathlib.Path, data: bytes | None, command: str = "sl") -> pathlib.Path:
    path = tmp_path / "config.json"
    if data == b"<surrogate>":  # a lone surrogate (escaped, so the file is valid JSON) in run_dir
        required = "" if command in ("rl", "distill", "rlhf") else '"train_data": "d.jsonl", '
        path.write_bytes(b"{" + required.encode() + b'"run_dir": "\\ud800"}')
    elif data == b"<folder>":
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("command", ["sl", "rl", "dpo", "distill", "rlhf"])
@pytest.mark.parametrize(
    ("data", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in CONFIG_FILES]
    + [pytest.param(*case[1:3], id=case[0]) for case in CONFIG_FIXED],
)
def test_a_bad_config_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], command: str, data: bytes | None, message: str
) -> None:
    path = _config_path(tmp_path, data, command)
    assert_cli_error(capsys, [command, str(path), "--dry-run"], message)


@pytest.mark.parametrize(
    ("data", "message"),
    [(None, "cannot read"), (b"<folder>", "cannot read"), (b"{", "cannot read"), (b"{}", "holds no list"),
     (b"[]", "holds no list"), (b'{"evals": 3}', "holds no list")],
    ids=["missing", "folder", "not json", "empty object", "empty list", "evals not a list"],
)  # fmt: skip
def test_a_bad_evals_file(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], data: bytes | None, message: str
) -> None:
    path = _config_path(tmp_path, data)
    err = assert_cli_error(capsys, ["eval", "tiny-llama", "--evals", str(path)], message)
    assert "error: eval.evals: " in err
