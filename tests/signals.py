"""Child processes that a test interrupts."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` that gives the child the default SIGINT disposition.

    A shell's background jobs (``cmd &``, ``nohup``) start with SIGINT ignored, and children
    inherit that: Python then installs no KeyboardInterrupt handler and the child rightly
    ignores a SIGINT that the test sends. Tests of Ctrl-C must not depend on how the suite
    itself was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
