"""SIGTERM handled like SIGINT, and signals held back while an output set is replaced.

``kill``, ``timeout``, systemd and ``docker stop`` send SIGTERM, whose default action ends the
process at once: no ``finally`` runs, temporary files stay behind and a scan's run is never
recorded as ended. Inside :func:`terminate_as_interrupt` SIGTERM raises :class:`Interrupted`,
a ``KeyboardInterrupt``, so it unwinds exactly like Ctrl-C. The exit status is then the
shell's convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

:func:`deferred_signals` holds SIGINT and SIGTERM back for the few renames that replace an
output set, then raises them, so a signal never lands between two of those renames.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupted", "deferred_signals", "exit_code_for", "terminate_as_interrupt"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM turned into an exception.

    Attributes:
        signum: The signal received.
        after_commit: The signal arrived while outputs were being replaced, and was held back
            until they all were.
    """

    def __init__(self, signum: int, *, after_commit: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.after_commit = after_commit


def exit_code_for(exc: BaseException) -> int:
    """128 + the signal number for :class:`Interrupted`; 130 for a plain KeyboardInterrupt."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` (like SIGINT raises
    KeyboardInterrupt); the previous handler is restored after it.
    """  # noqa: D205
    if not _in_main_thread():
        yield
        return

    def raise_interrupted(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block; raise the first one after it.

    Raises:
        Interrupted: After the block, with ``after_commit=True``, if a signal arrived.
    """
    if not _in_main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, remember) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    if received:
        raise Interrupted(received[0], after_commit=True)
