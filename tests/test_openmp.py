"""``single_threaded``: this thread's torch operations on one OpenMP thread, other threads untouched."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from tinkerflow.shell.backends.local import openmp  # noqa: E402  (after importorskip)


def test_single_threaded_changes_only_the_calling_thread() -> None:
    if openmp._gnu_openmp() is None:
        pytest.skip("torch here does not run on the GNU OpenMP runtime (nothing to switch)")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen: list[int] = []
        with openmp.single_threaded():
            seen.append(torch.get_num_threads())
            other = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            other.start()
            other.join()
        seen.append(torch.get_num_threads())
        assert seen == [1, 2, 2]
    finally:
        torch.set_num_threads(threads)


def test_single_threaded_restores_the_count_after_an_error() -> None:
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"), openmp.single_threaded():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
