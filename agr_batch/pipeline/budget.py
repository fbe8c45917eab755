"""A byte budget for decoded frames in flight between two pipeline stages.

Queues bounded by a frame count bound memory only when frames are small: eight queued frames
of an 88-megapixel picture are 2 GB. The decoder therefore reserves each frame's bytes before
handing it on, and the detector gives them back once it is done with the frame, so the bytes
in flight stay under the limit whatever the frame size. A frame larger than the whole budget
still passes when nothing else is in flight, so no input can stall the pipeline.
"""

from __future__ import annotations

import threading


class ByteBudget:
    """Bytes reserved by one stage and released by the next.

    Args:
        limit: Bytes allowed in flight (one larger item passes alone).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"byte budget must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int, stop: threading.Event, *, poll_s: float = 0.1) -> bool:
        """Reserve ``nbytes``, waiting while the budget is full; False if ``stop`` was set."""
        with self._cond:
            while self.used > 0 and self.used + nbytes > self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(poll_s)
            if stop.is_set():
                return False
            self.used += nbytes
            self.peak = max(self.peak, self.used)
            return True

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` reserved by :meth:`acquire`."""
        with self._cond:
            self.used = max(0, self.used - nbytes)
            self._cond.notify_all()
