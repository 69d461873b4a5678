"""The run's progress bar (tinkerflow.shell.io.progress, tqdm): what it shows, where it starts on resume, and how it
keeps messages and quiet streams readable."""

from __future__ import annotations

import io
import threading
import time

from tinkerflow.shell.io.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_quiet_stream_gets_the_final_state_once() -> None:
    """A stream that is not a terminal (a log file) is not redrawn per step; the end is drawn once, on its line."""
    stream = io.StringIO()
    progress = Progress(10, 0, stream, "train_nll")
    for step in range(10):
        progress.update(step, 1.0 / (step + 1))
    progress.close()
    text = stream.getvalue()
    assert text.count("step 10/10") == 1
    assert "train_nll 0.1000" in text
    assert "elapsed, ETA" in text
    assert text.endswith("\n")


def test_resumed_bar_starts_at_the_resume_step_and_messages_keep_their_lines() -> None:
    stream = _Terminal()
    progress = Progress(8, 5, stream, "reward")
    stream.write("resuming at step 5\n")  # written before any step: nothing to clear
    assert progress.step == 5
    time.sleep(0.15)  # past the terminal's redraw interval
    progress.update(5, 0.5)
    progress.write("eval: 0.7\n")
    progress.update(6, 0.75)
    progress.update(7, 1.0)
    progress.close()
    text = stream.getvalue()
    assert text.startswith("resuming at step 5\n")
    assert "step 6/8" in text
    assert "step 4/8" not in text
    assert "\reval: 0.7\n" in text  # the bar was cleared before the message
    assert "step 8/8" in text
    assert "reward 1.0000" in text


def test_no_step_draws_nothing_and_no_thread_is_left() -> None:
    threads = threading.active_count()
    stream = io.StringIO()
    progress = Progress(3, 0, stream)
    progress.write("hello\n")
    progress.close()
    progress.close()
    assert stream.getvalue() == "hello\n"
    assert threading.active_count() == threads
