"""Ctrl-C and SIGTERM during a long command: finish the iteration, checkpoint, say so in one line, exit 130 / 143.

``with interrupts() as stop:`` installs handlers for SIGINT and SIGTERM; ``stop()`` turns true after the first
signal (the loop then checkpoints every running prompt and raises :class:`~find_jax.loop.Interrupted`, which
leaves the block carrying the signal's name). A second signal raises ``KeyboardInterrupt`` at once. Handlers are
only installed in the main thread; elsewhere ``stop()`` stays false.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from find_jax.loop import Interrupted

log = logging.getLogger(__name__)

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopFlag:
    """``flag()`` is true once a signal arrived; ``flag.signal`` names it (``"SIGINT"`` / ``"SIGTERM"``)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def interrupts() -> Iterator[StopFlag]:
    """See the module doc."""
    flag = StopFlag()

    def handler(signum: int, frame) -> None:
        if flag.signal is not None:
            raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name
        log.warning("%s: finishing this iteration and checkpointing (press Ctrl-C again to exit at once)", flag.signal)

    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            installed[sig] = signal.signal(sig, handler)
    try:
        yield flag
    except Interrupted as e:
        e.signal = flag.signal or "SIGINT"
        raise
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)


__all__ = ["EXIT_CODES", "StopFlag", "interrupts"]
