"""The progress line of a training run, drawn by tqdm. (Shell: a clock and a stream.)

One line: ``step 12/40 |#####     | train_nll 1.2345 [00:07 elapsed, ETA 00:21]``. A resumed run's bar starts at
its resume step, and its ETA counts only the steps this process ran. Nothing is drawn before the first step is
logged, so messages a loop writes before training (the held-out score, "resuming at step ...") stay on their own
lines; text written while the bar is drawn goes through :meth:`Progress.write`, which clears and redraws it.

On a stream that is not a terminal (a log file, a ``StringIO`` in tests) the bar is redrawn at most every
:data:`QUIET_INTERVAL_S` seconds, plus once at the end, instead of several times a second.
"""

from __future__ import annotations

from typing import Final, TextIO

from tqdm import tqdm

__all__ = ["QUIET_INTERVAL_S", "Progress"]

#: Seconds between redraws when the stream is not a terminal.
QUIET_INTERVAL_S: Final = 30.0

_BAR_FORMAT: Final = "step {n_fmt}/{total_fmt} |{bar:20}| {desc} [{elapsed} elapsed, ETA {remaining}]"


class _Bar(tqdm):  # type: ignore[misc]  # tqdm ships no type information (no py.typed)
    """tqdm without its monitor thread (the run's loop updates the bar often enough; no thread is left behind)."""

    monitor_interval = 0


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False


class Progress:
    """A run's progress bar on ``stream``: steps done of ``total``, the latest ``label`` value, elapsed and ETA.

    ``start`` is the first step this process runs (the resume step).
    """

    def __init__(self, total: int, start: int, stream: TextIO, label: str = "loss") -> None:
        self.total, self.start, self.stream, self.label = total, start, stream, label
        terminal = _is_terminal(stream)
        self._bar = _Bar(
            total=total,
            initial=start,
            file=stream,
            bar_format=_BAR_FORMAT,
            ascii=not terminal,
            dynamic_ncols=terminal,
            mininterval=0.1 if terminal else QUIET_INTERVAL_S,
            delay=1e-3,  # draw nothing until the first step is logged (the clock still starts now)
            leave=True,
        )
        self._closed = False

    @property
    def step(self) -> int:
        """Steps completed so far (the bar's position)."""
        return int(self._bar.n)

    def update(self, step: int, value: float) -> None:
        """Step ``step`` (0-indexed) is done and its progress metric is ``value``."""
        self._bar.set_description_str(f"{self.label} {value:.4f}", refresh=False)
        self._bar.update(step + 1 - self._bar.n)

    def write(self, text: str) -> None:
        """Write ``text`` to the stream without tearing the bar (cleared, written, redrawn)."""
        if self._closed or not self._drawn():  # nothing on the line to clear
            self.stream.write(text)
            self.stream.flush()
            return
        with self._bar.external_write_mode(file=self.stream):
            self.stream.write(text)
            self.stream.flush()

    def _drawn(self) -> bool:
        """Whether the bar has been drawn (tqdm's own test: a draw after the start delay)."""
        return bool(self._bar.last_print_t >= self._bar.start_t + self._bar.delay)

    def close(self) -> None:
        """Draw the final state (when any step was logged) and end the line."""
        if self._closed:
            return
        self._closed = True
        if self._bar.n > self.start and not self._drawn():  # a quiet stream saw no redraw yet: draw the end once
            self._bar.refresh()
            self.stream.write("\n")
            self.stream.flush()
        self._bar.close()
