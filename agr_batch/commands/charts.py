"""The report's charts, drawn with matplotlib from cells already suppressed.

Every count axis has integer ticks; faces and visitors get their own panels (their scales
differ by the number of faces per person); legends sit outside the plotting area; a
suppressed cell is drawn as a grey hatched band, never as a bar, so a reader sees that a
value exists but not its size. Figures are returned to the caller, which turns them into
inline SVG (:func:`to_svg`) and may save PNGs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

COLORS = {"Male": "#4C78A8", "Female": "#E45756", "faces": "#72B7B2", "visitors": "#F58518"}
FOOTAGE_COLOR = "#9D9D9D"
BAND = {"color": "#EEEEEE", "hatch": "///", "edgecolor": "#B0B0B0", "linewidth": 0}
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_TICKS = 12


@dataclass(frozen=True)
class Cells:
    """One chart's cells after suppression.

    Attributes:
        frame: Indexed by the cell's key (in display order), with columns ``faces``,
            ``visitors`` (counts; never drawn where suppressed), ``suppressed`` (bool),
            ``withheld`` (bool: holds rows whose counts the table withheld) and ``people``
            (a lower bound of the distinct people).
        note: Says how many cells are suppressed, or None.
    """

    frame: pd.DataFrame
    note: str | None = None

    def shown(self, column: str) -> np.ndarray:
        """``column`` with suppressed cells as NaN."""
        values = self.frame[column].to_numpy(dtype=np.float64)
        return np.where(self.frame.suppressed.to_numpy(), np.nan, values)

    @property
    def suppressed(self) -> np.ndarray:
        """Which cells are suppressed."""
        return self.frame.suppressed.to_numpy(dtype=bool)

    @property
    def nonempty(self) -> np.ndarray:
        """Which cells count someone (faces or visitors)."""
        return (self.frame.faces.to_numpy() > 0) | (self.frame.visitors.to_numpy() > 0)


def to_svg(fig: Figure, name: str, png_dir: Path | None) -> str:
    """``fig`` as inline SVG (text kept as text); also ``png_dir/name.png`` when given."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype for inline use


def _integer_axis(axis: matplotlib.axis.Axis, *, absolute: bool = False) -> None:
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if absolute:  # the pyramid's left side counts leftwards
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{abs(round(v))}"))


def _band_legend(fig: Figure, any_suppressed: bool, extra: Sequence[Patch] = ()) -> None:
    """A legend just above the top panel: outside every plotting area, so it hides no bar."""
    handles = list(extra)
    if any_suppressed:
        handles.append(Patch(facecolor=BAND["color"], hatch=BAND["hatch"],
                             edgecolor=BAND["edgecolor"], label="suppressed"))  # fmt: skip
    if handles:
        top = max(ax.get_position().y1 for ax in fig.axes)
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top + 0.01),
                   ncol=len(handles), frameon=False)  # fmt: skip


def _hbars(ax: Axes, labels: Sequence[str], values: np.ndarray, suppressed: np.ndarray,
           color: str, *, sign: float = 1.0, limit: float) -> None:  # fmt: skip
    y = np.arange(len(labels))
    ax.barh(y, sign * np.nan_to_num(values), color=color)
    if suppressed.any():
        ax.barh(y[suppressed], sign * limit, **BAND)


def _vbars(ax: Axes, x: np.ndarray, values: np.ndarray, suppressed: np.ndarray, color: str,
           *, limit: float, width: float = 0.8) -> None:  # fmt: skip
    ax.bar(x, np.nan_to_num(values), width, color=color)
    if suppressed.any():
        ax.bar(x[suppressed], limit, width, **BAND)


def _limit(*arrays: np.ndarray) -> float:
    finite = [a[np.isfinite(a)] for a in arrays]
    top = max((float(a.max()) for a in finite if a.size), default=0.0)
    return max(1.0, top) * 1.08


def pyramid(cells: Cells, ages: Sequence[str], measure: str) -> Figure:
    """Age by gender as a population pyramid (Male left, Female right)."""
    frame = cells.frame
    fig, ax = plt.subplots(figsize=(7, 4))
    sides = {}
    for gender in ("Male", "Female"):
        part = frame.xs(gender, level="gender").reindex(list(ages))
        sides[gender] = (
            np.where(part.suppressed.to_numpy(bool), np.nan, part[measure].to_numpy(float)),
            part.suppressed.to_numpy(bool),
        )
    limit = _limit(*(v for v, _ in sides.values()))
    for gender, sign in (("Male", -1.0), ("Female", 1.0)):
        values, suppressed = sides[gender]
        _hbars(ax, ages, values, suppressed, COLORS[gender], sign=sign, limit=limit)
    ax.set_yticks(range(len(ages)), list(ages))
    ax.set_xlim(-limit, limit)
    _integer_axis(ax.xaxis, absolute=True)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{measure} (Male left, Female right)")
    ax.set_ylabel("age")
    genders = [Patch(color=COLORS[g], label=g) for g in ("Male", "Female")]
    _band_legend(fig, bool(frame.suppressed.any()), genders)
    return fig


def race_bars(cells: Cells, measure: str) -> Figure:
    """Race distribution."""
    labels = [str(k) for k in cells.frame.index]
    values = cells.shown(measure)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    limit = _limit(values)
    _hbars(ax, labels, values, cells.suppressed, "#54A24B", limit=limit)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, limit)
    _integer_axis(ax.xaxis)
    ax.set_xlabel(measure)
    _band_legend(fig, bool(cells.suppressed.any()))
    return fig


def time_labels(times: Sequence[object], *, absolute: bool, window_s: float) -> list[str]:
    """One label per time, empty but for at most MAX_TICKS evenly spaced ones.

    A label gives the date only where it differs from the previous label's, and a label
    that would repeat the previous one is left empty.
    """
    step = max(1, math.ceil(len(times) / MAX_TICKS))
    labels: list[str] = []
    last_day = None
    for i in range(len(times)):
        if i % step:
            labels.append("")
            continue
        if not absolute:
            seconds = float(times[i])  # type: ignore[arg-type]
            text = f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} min"
        else:
            stamp = pd.Timestamp(times[i])  # type: ignore[arg-type]
            clock = "%H:%M:%S" if window_s < 60 else "%H:%M"
            if window_s >= 86_400:
                text = stamp.strftime("%Y-%m-%d")
            elif stamp.date() != last_day:
                text = stamp.strftime(f"%Y-%m-%d {clock}")
            else:
                text = stamp.strftime(clock)
            last_day = stamp.date()
        previous = next((la for la in reversed(labels) if la), None)
        labels.append("" if text == previous else text)
    return labels


def _time_ticks(ax: Axes, labels: Sequence[str]) -> None:
    """Ticks where :func:`time_labels` left a label."""
    ticks = [i for i, text in enumerate(labels) if text]
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=30, ha="right")


def over_time(cells: Cells, footage_s: np.ndarray | None, *, absolute: bool,
              window_s: float, tz_name: str) -> Figure:  # fmt: skip
    """Faces, visitors and footage processed per window: one panel each, one time axis."""
    frame = cells.frame
    x = np.arange(len(frame))
    panels = ["faces", "visitors"] + (["footage"] if footage_s is not None else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.9 * len(panels) + 0.6), sharex=True)
    width = 0.8 if len(x) < 200 else 1.0
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "footage":
            assert footage_s is not None
            unit, scale = ("min", 60.0) if window_s >= 120 else ("s", 1.0)
            ax.bar(x, footage_s / scale, width, color=FOOTAGE_COLOR)
            ax.set_ylabel(f"footage ({unit})")
            ax.set_ylim(0, max(1.0, float(np.nanmax(footage_s / scale, initial=0))) * 1.08)
            continue
        values = cells.shown(panel)
        limit = _limit(values)
        _vbars(ax, x, values, cells.suppressed, COLORS[panel], limit=limit, width=width)
        ax.set_ylim(0, limit)
        _integer_axis(ax.yaxis)
        ax.set_ylabel(panel)
    ax = axes[-1]
    ax.set_xlim(-0.6, len(x) - 0.4)
    _time_ticks(ax, time_labels(list(frame.index), absolute=absolute, window_s=window_s))
    ax.set_xlabel(f"window start, {tz_name}" if absolute else "time from each source's start")
    _band_legend(fig, bool(cells.suppressed.any()))
    return fig


def hour_and_day(hours: Cells, days: Cells, *, tz_name: str) -> Figure:
    """Faces and visitors by hour of day and by day of week (top: faces; bottom: visitors)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [3, 1.4]})
    for row, measure in enumerate(("faces", "visitors")):
        for col, (cells, labels) in enumerate(
            ((hours, [str(h) for h in range(24)]), (days, list(DAYS)))
        ):
            ax = axes[row][col]
            values = cells.shown(measure)
            limit = _limit(values)
            x = np.arange(len(labels))
            _vbars(ax, x, values, cells.suppressed, COLORS[measure], limit=limit)
            ax.set_ylim(0, limit)
            _integer_axis(ax.yaxis)
            if col == 0:
                ax.set_xticks(x[::3], labels[::3])
                ax.set_ylabel(measure)
                if row == 1:
                    ax.set_xlabel(f"hour of day, {tz_name}")
            else:
                ax.set_xticks(x, labels)
                if row == 1:
                    ax.set_xlabel("day of week")
    fig.tight_layout()
    _band_legend(fig, bool(hours.suppressed.any() or days.suppressed.any()))
    return fig


def per_source(cells: Cells) -> Figure:
    """Faces and visitors per source (keyed by relative path), side by side."""
    labels = [str(k) for k in cells.frame.index]
    fig, axes = plt.subplots(
        1, 2, figsize=(10, 0.42 * len(labels) + 1.4), sharey=True, gridspec_kw={"wspace": 0.08}
    )
    y = np.arange(len(labels))
    for ax, measure in zip(axes, ("faces", "visitors"), strict=True):
        values = cells.shown(measure)
        limit = _limit(values)
        _hbars(ax, labels, values, cells.suppressed, COLORS[measure], limit=limit)
        ax.set_xlim(0, limit)
        _integer_axis(ax.xaxis)
        ax.set_xlabel(measure)
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    _band_legend(fig, bool(cells.suppressed.any()))
    return fig
