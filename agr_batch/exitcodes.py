"""Exit codes of ``agr-batch`` and ``agr-train``: what a cron job or a script can act on.

=====  ===================================================================================
code   meaning
=====  ===================================================================================
0      everything asked for was done
1      some inputs failed in this run (one line each on stderr); the good ones were written
2      usage or configuration error: nothing was processed or replaced
3      ``scan``: another scan holds the dataset's lock (an overlapping cron run)
4      ``scan``: nothing failed in this run, but files that failed in earlier scans still
       fail (unchanged since; ``agr-batch status`` lists them, ``--retry-failed`` retries)
130    interrupted by SIGINT (Ctrl-C); 128 + the signal number in general
143    interrupted by SIGTERM (``kill``, ``timeout``, systemd, ``docker stop``)
=====  ===================================================================================
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_STILL_FAILING",
    "EXIT_USAGE",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_STILL_FAILING = 4
EXIT_INTERRUPTED = 130
"""SIGINT; :func:`agr_batch.signals.exit_code_for` gives 128 + the signal number."""
