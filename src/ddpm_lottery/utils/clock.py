"""Seconds of work: a process's wall clock less the time it spent stopped.

A long study is paused with ``kill -STOP`` and resumed with ``kill -CONT`` (to time a benchmark on an
idle machine, or to run the tests), and every monotonic clock runs on while the process is stopped:
a level paused for 15 minutes recorded 15 more minutes of training.  A stopped process cannot be told
that it is being stopped, but it is told when it continues (SIGCONT), so the clock remembers when the
work last made progress (:meth:`WorkClock.mark`, once a training step) and, on SIGCONT, counts
everything since then as stopped.  What it can get wrong is bounded by one step: the work between the
last mark and the stop is counted as stopped too.

Where SIGCONT does not exist (Windows) or the clock does not run in the main thread (where Python runs
signal handlers), it is the plain wall clock.
"""

from __future__ import annotations

import signal
import threading
import time


class WorkClock:
    """Use as a context manager around the work; :meth:`seconds` is the work's time so far."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last_mark = self.started
        self.stopped = 0.0
        self._previous = None
        self._installed = False

    def mark(self) -> None:
        """The work made progress now (a training step ended)."""
        self.last_mark = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started - self.stopped

    def _on_continue(self, signum, frame) -> None:
        now = time.perf_counter()
        self.stopped += now - self.last_mark
        self.last_mark = now
        if callable(self._previous):
            self._previous(signum, frame)

    def __enter__(self) -> WorkClock:
        self.started = self.last_mark = time.perf_counter()
        self.stopped = 0.0
        if hasattr(signal, "SIGCONT") and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGCONT, self._on_continue)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGCONT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
