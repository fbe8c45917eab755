"""Time zones and wall-clock windows (``--tz``, ``--align-windows clock``).

Windows start either at each source's own start (``start``: 0, W, 2W … seconds into the file)
or on the wall clock (``clock``: for 15-minute windows at :00, :15, :30 and :45 in the
chosen time zone), so that windows of several cameras line up and a chart's bars mean the
same quarter of an hour everywhere. The UTC offset in force at a source's start applies to
the whole source: a recording that spans a daylight-saving change keeps its grid.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ALIGN_CHOICES = ("start", "clock")
"""``--align-windows`` values: windows from each source's start, or on the wall clock."""

SECONDS_PER_DAY = 86_400


def _local_zone_name() -> str | None:
    """The IANA name of this system's time zone ($TZ, else /etc/localtime), if it has one."""
    env = os.environ.get("TZ", "").lstrip(":")
    if env:
        return env
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:
        return None
    parts = Path(target).parts
    if "zoneinfo" in parts:
        return "/".join(parts[parts.index("zoneinfo") + 1 :]) or None
    return None


def resolve_tz(name: str | None) -> dt.tzinfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Berlin``, or ``UTC``); None: local time.

    Raises:
        ValueError: For a name that is not a known time zone.
    """
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"--tz {name}: not a known time zone (use an IANA name such as "
                "Europe/Berlin, America/New_York or UTC)"
            ) from None
    local = _local_zone_name()
    if local:
        try:
            return ZoneInfo(local)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    # No name to be had: the current offset, which ignores daylight-saving changes.
    return dt.datetime.now().astimezone().tzinfo or dt.UTC


def tz_label(name: str | None) -> str:
    """How a page names the time zone: ``Europe/Berlin``, or ``Etc/UTC, local time``."""
    if name:
        return name
    local = _local_zone_name()
    if local:
        return f"{local}, local time"
    offset = dt.datetime.now().astimezone().strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}, local time"


def check_clock_window(window_s: float) -> None:
    """Clock windows must tile a day, so that every day's grid starts at midnight.

    Raises:
        ValueError: For a window that does not divide 24 hours.
    """
    per_day = SECONDS_PER_DAY / window_s
    if window_s > SECONDS_PER_DAY or abs(per_day - round(per_day)) > 1e-6 * per_day:
        raise ValueError(
            f"--align-windows clock needs a --window that divides a day (e.g. 60, 300, 900, "
            f"3600 or 86400 seconds), got {window_s:g}"
        )


def clock_phase(start: dt.datetime, window_s: float, tz: dt.tzinfo) -> float:
    """Seconds between the wall-clock window boundary at or before ``start`` and ``start``.

    With windows of ``window_s`` seconds tiling each day from midnight in ``tz``, a source
    that starts at ``start`` has its first window begin ``phase`` seconds before it; window
    k covers ``[k·W − phase, (k+1)·W − phase)`` seconds of the source.
    """
    wall = start.astimezone(tz)
    since_midnight = (
        wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1_000_000
    )
    phase = math.fmod(since_midnight, window_s)
    return 0.0 if phase < 1e-9 or window_s - phase < 1e-9 else phase
