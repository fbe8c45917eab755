"""Ranges of the numeric options, and the caps that keep memory bounded whatever the input.

Every option is checked where its configuration record is built, so the command line, a
``scan --config`` file and the Python API refuse the same values with the same one-line
message (the CLI turns it into exit code 2). NaN and infinities are refused everywhere: a
NaN compares false with everything, so it would silently disable whatever limit it set.
"""

from __future__ import annotations

import math
import numbers

MAX_SAMPLE_FPS = 1000.0
"""Sampling faster than this takes every frame anyway."""

MIN_WINDOW_S = 1e-3
MAX_WINDOW_S = 1e8
"""Windows from 1 ms to about three years: beyond these, window indices overflow int64 or
absolute window times leave the datetime range."""

MAX_GAP_S = 1e6
MAX_SETTLE_S = 1e7

MIN_DET_SIZE = 64
MAX_DET_SIZE = 4096
"""The detector's working resolution; 4096 px already needs about 2 GB for CenterFace."""

MAX_MIN_FACE = 65_535
MAX_BATCH_SIZE = 4096
MAX_BEST_K = 1000
MAX_REFRESH_EVERY = 1_000_000
MAX_MIN_CELL_COUNT = 1_000_000_000
MAX_SEGMENT_S = 1e7

DEFAULT_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024
"""Decoded frame bytes allowed between the decoder and the detector (one frame larger than
this still passes, alone)."""


def check_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float,
    low_open: bool = False,
    unit: str = "",
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number in its range.

    Args:
        name: The option as the user types it (``--window``), for the message.
        value: The value to check.
        low: Smallest allowed value.
        high: Largest allowed value.
        low_open: ``low`` itself is not allowed.
        unit: Unit named in the message (``seconds``).
        integer: Only whole numbers are allowed.
    """
    suffix = f" {unit}" if unit else ""
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    kind = "a whole number" if integer else "a number"
    expected = f"{name} must be {kind} {lo} and <= {high:g}{suffix}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{expected}, got {shown}")
    if integer and not isinstance(value, numbers.Integral):
        raise ValueError(f"{expected}, got {shown}")
    # Whole numbers are compared exactly: float() of a huge int would overflow.
    if isinstance(value, numbers.Integral):
        v: float | int = int(value)
    else:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{expected}, got {shown}")
    if v > high or v < low or (low_open and v == low):
        raise ValueError(f"{expected}, got {shown}")
