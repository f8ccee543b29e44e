"""Progress of long operations (save, load, verify, convert): a callable
that hears how many bytes are done out of how many in all.

The contract, the same as the Rust crate's, C's, C++'s and Go's:

- the first call is ``progress(0, total)``, before any byte is processed;
- each later call has a larger ``done`` than the one before;
- the last call is ``progress(total, total)``, made only when the operation
  succeeded; a failed operation stops calling wherever it failed;
- ``total`` is the same in every call of one operation;
- calls are serialized, even when the work runs on several threads.

An exception raised by the callable propagates and ends the operation,
which then leaves nothing behind (a save publishes no file).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["ProgressCallback", "Tracker"]

ProgressCallback = Callable[[int, int], object]
"""``progress(done, total)``, both in bytes."""


class Tracker:
    """One operation's report: advanced by the bytes each step finishes."""

    __slots__ = ("_callback", "_done", "_lock", "_reported", "total")

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self._callback = callback
        self.total = total
        self._done = 0
        self._reported = 0
        self._lock = threading.Lock()
        if callback is not None:
            callback(0, total)

    def advance(self, nbytes: int) -> None:
        """Records ``nbytes`` more done and reports the new count, unless it
        would not be larger than the last report. The total itself is
        reported by :meth:`finish` alone."""
        if self._callback is None:
            return
        with self._lock:
            self._done = min(self._done + nbytes, self.total)
            if self._reported < self._done < self.total:
                self._reported = self._done
                self._callback(self._done, self.total)

    def finish(self) -> None:
        """Reports ``(total, total)``: the operation succeeded."""
        if self._callback is None:
            return
        with self._lock:
            # An empty operation's start, (0, 0), was already its end.
            if self._reported < self.total:
                self._reported = self.total
                self._callback(self.total, self.total)
