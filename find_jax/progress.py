"""A small progress bar for long runs: iterations, the latest reward and an ETA, on stderr (the CLI draws it; the
library reports progress to it through :meth:`ProgressBar.start` / ``update`` / ``advance`` / ``close``).

On a terminal the bar redraws one line (``\\r``); in a log file (not a tty) it writes a full line every
``log_every_pct`` percent, so logs stay readable; ``quiet=True`` writes nothing. The ETA uses the mean
time between consecutive updates, leaving out the first update and the first after each :meth:`advance`
(those include XLA compilation or setup).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``"1:02:03"`` / ``"2:03"`` / ``"?"`` (for non-finite or negative values)."""
    if not seconds == seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:+.4f}"
    return str(value)


class ProgressBar:
    """``bar = ProgressBar(total, desc="FIND"); bar.update(reward=0.12); ...; bar.close()``.

    total: number of updates expected; quiet: write nothing; stream: where to write (default stderr);
    log_every_pct: when not a terminal, write a line each time this percentage is passed (<= 0: every update);
    clock: time source (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        quiet: bool = False,
        stream: TextIO | None = None,
        width: int = 20,
        log_every_pct: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0:
            raise ValueError(f"total must be >= 0; got {total}")
        self.total = int(total)
        self.desc = desc
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.log_every_pct = log_every_pct
        self.clock = clock
        self.done = 0
        self.fields: dict[str, Any] = {}
        self._t_start = clock()
        self._timed = 0  # units whose duration was measured
        self._timed_s = 0.0  # their total duration
        self._t_last: float | None = None  # time of the last update; None after a break (advance / start)
        self._last_logged_pct = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def start(self, total: int, desc: str = "") -> None:
        """(Re)starts the bar for ``total`` units (the library calls this; see :class:`find_jax.loop.ProgressSink`)."""
        if total < 0:
            raise ValueError(f"total must be >= 0; got {total}")
        self.total, self.desc = int(total), desc or self.desc
        self.done, self.fields, self._timed, self._timed_s = 0, {}, 0, 0.0
        self._t_start, self._t_last, self._last_logged_pct = self.clock(), None, 0.0

    def rate_s(self) -> float:
        """Mean seconds per unit, measured between consecutive updates (``nan`` until known)."""
        if self._timed < 1:
            return float("nan")
        return self._timed_s / self._timed

    def eta_s(self) -> float:
        """Seconds left at :meth:`rate_s` (``nan`` until it is known)."""
        return self.rate_s() * max(self.total - self.done, 0)

    def line(self) -> str:
        """The current bar as text (no line ending)."""
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        parts = [self.desc] if self.desc else []
        parts.append(f"{self.done}/{self.total} [{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:3.0f}%")
        parts += [f"{k} {_format_value(v)}" for k, v in self.fields.items()]
        rate = self.rate_s()
        if rate == rate:
            parts.append(f"{rate:.2f} s/it")
        parts.append(f"ETA {format_duration(self.eta_s())}")
        parts.append(f"elapsed {format_duration(self.clock() - self._t_start)}")
        return "  ".join(parts)

    def update(self, n: int = 1, **fields: Any) -> None:
        """Counts ``n`` more updates and shows ``fields`` (e.g. ``reward=0.12``, ``prompts="4/12"``)."""
        self.done += n
        now = self.clock()
        if self._t_last is not None:
            self._timed += n
            self._timed_s += now - self._t_last
        self._t_last = now
        self.fields.update(fields)
        self._show()

    def advance(self, n: int) -> None:
        """Counts ``n`` units done without timing them (work resumed from a checkpoint, or skipped); the
        next update's duration is not timed either (it may include setup such as compiling)."""
        self._t_last = None
        if n <= 0:
            return
        self.done += n
        self._show()

    def _show(self) -> None:
        if self.quiet:
            return
        if self._tty:
            self.stream.write("\r" + self.line() + " ")
            self.stream.flush()
            return
        pct = 100.0 * self.done / self.total if self.total else 100.0
        step = self.log_every_pct
        if step <= 0 or pct >= self._last_logged_pct + step or self.done == self.total:
            self._last_logged_pct = pct - (pct % step) if step > 0 else pct
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Ends the bar's line on a terminal."""
        if not self.quiet and self._tty:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["ProgressBar", "format_duration"]
