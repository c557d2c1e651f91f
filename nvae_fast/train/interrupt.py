"""SIGINT and SIGTERM as requests to stop, never as tracebacks.

:class:`StopSignals` replaces the handlers of both signals while a command runs. Inside its
:meth:`~StopSignals.deferred` section (the training loop) the first signal is only recorded, so the loop
can finish its step and write a checkpoint before it stops; any other signal (a second one, or one
outside that section: start-up, evaluation, sampling, benchmarks) raises :class:`Interrupted`, which
unwinds the command at once through its ``finally`` clauses (temporary files are removed, logs closed)
and which the CLI turns into one line and the exit status ``128 + signal number`` (130, 143) that shells
expect of a process stopped by a signal.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

__all__ = ["Interrupted", "StopSignals", "signal_name"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for ``signal.SIGINT`` and so on."""
    return signal.Signals(signum).name


class Interrupted(BaseException):
    """A command stopped at once by signal ``signum``.

    A ``BaseException`` like ``KeyboardInterrupt``, so that ``except Exception`` clauses on the way up
    do not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager owning SIGINT and SIGTERM for its duration (main thread only; elsewhere inert).

    ``received`` is the number of the first signal recorded inside :meth:`deferred` (0: none).
    """

    def __init__(self):
        self.received = 0
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextmanager
    def deferred(self):
        """Within: the first signal sets ``received`` for the caller to stop at a safe point; later
        signals raise :class:`Interrupted`."""
        self._deferring = True
        try:
            yield self
        finally:
            self._deferring = False

    def _handle(self, signum, frame) -> None:
        if self._deferring and not self.received:
            self.received = signum
            return
        raise Interrupted(signum)
