"""``agr-batch report``: one self-contained HTML file with charts from a stats table or dataset.

The page makes no external requests: charts are inline SVG drawn with matplotlib, styles are
inline, and there is no script. Small cells are suppressed before anything is drawn.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from agr_batch import __version__
from agr_batch.labels import AGE, GENDER, RACE
from agr_batch.stages.aggregate import STATS_SCHEMA
from agr_batch.storage.safety import OutputError, is_within, same_file
from agr_batch.storage.sinks import METADATA_KEY, atomic_path

log = logging.getLogger(__name__)

DEFAULT_MIN_CELL_COUNT = 5
"""Reports are shared, so by default cells of fewer than 5 faces or visitors are dropped."""

COLORS = {"Male": "#4C78A8", "Female": "#E45756", "faces": "#72B7B2", "visitors": "#F58518"}
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class ReportData:
    """A stats table and what describes it."""

    table: pd.DataFrame
    config: dict[str, Any]
    source_path: str
    suppressed_cells: int
    suppressed_faces: int
    suppressed_visitors: int
    min_cell_count: int


def load_stats(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a stats Parquet file or a scanned dataset folder, with its recorded configuration.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not an agr-batch stats table.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            dataset = pads.dataset(path, partitioning="hive")
            if not dataset.files:
                if not (path / "_state" / "state.sqlite").is_file():
                    raise ValueError(
                        f"{path}: no stats here (neither a stats table nor a scanned dataset)"
                    )
                # A scanned dataset before its first stats part: an empty report, not an
                # error, so that "scan, then report" works from the first cron run.
                return STATS_SCHEMA.empty_table().to_pandas(), {}
            table = dataset.to_table()
            meta = pq.read_schema(dataset.files[0]).metadata or {}
        elif not path.is_file():
            raise ValueError(f"{path}: not a regular file")
        else:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"{path}: not a readable Parquet table or dataset ({e})") from None
    raw = meta.get(METADATA_KEY) if meta else None
    config = json.loads(raw) if raw else {}
    frame = table.to_pandas()
    required = {"source", "window_start", "age", "gender", "race", "faces"}
    if table.num_columns and not required <= set(frame.columns):
        missing = sorted(required - set(frame.columns))
        raise ValueError(f"{path}: not an agr-batch stats table (missing columns {missing})")
    if "visitors" not in frame.columns:
        frame["visitors"] = 0
    if "date" in frame.columns:
        frame = frame.drop(columns=["date"])
    return frame, config


def suppress(frame: pd.DataFrame, min_cell_count: int) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop cells with fewer than ``min_cell_count`` faces, or with 0 < visitors < that."""
    if min_cell_count <= 0 or frame.empty:
        return frame, {"cells": 0, "faces": 0, "visitors": 0}
    small = (frame.faces < min_cell_count) | (
        (frame.visitors > 0) & (frame.visitors < min_cell_count)
    )
    dropped = frame[small]
    return frame[~small], {
        "cells": int(small.sum()),
        "faces": int(dropped.faces.sum()),
        "visitors": int(dropped.visitors.sum()),
    }


def _svg(fig: plt.Figure, name: str, png_dir: Path | None) -> str:
    buf = io.StringIO()
    # Text stays text (searchable, accessible, smaller) rather than glyph outlines.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_dir / f"{name}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype for inline use


def _measure(frame: pd.DataFrame) -> str:
    return "visitors" if frame.visitors.sum() > 0 else "faces"


def pyramid(frame: pd.DataFrame, png_dir: Path | None) -> str:
    """Age distribution by gender as a population pyramid."""
    m = _measure(frame)
    counts = frame.pivot_table(index="age", columns="gender", values=m, aggfunc="sum", fill_value=0)
    counts = counts.reindex(index=list(AGE), columns=list(GENDER), fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 4))
    y = range(len(AGE))
    ax.barh(y, -counts["Male"], color=COLORS["Male"], label="Male")
    ax.barh(y, counts["Female"], color=COLORS["Female"], label="Female")
    ax.set_yticks(list(y), AGE)
    limit = max(1, int(counts.to_numpy().max()))
    ax.set_xlim(-limit * 1.1, limit * 1.1)
    ax.set_xticks(ax.get_xticks(), [f"{abs(int(v))}" for v in ax.get_xticks()])
    ax.set_xlabel(f"{m} (Male left, Female right)")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.legend(loc="lower right")
    ax.set_title(f"Age by gender ({m})")
    return _svg(fig, "age_pyramid", png_dir)


def race_bars(frame: pd.DataFrame, png_dir: Path | None) -> str:
    """Race distribution."""
    m = _measure(frame)
    counts = frame.groupby("race")[m].sum().reindex(list(RACE), fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(list(RACE), counts.to_numpy(), color="#54A24B")
    ax.invert_yaxis()
    ax.set_xlabel(m)
    ax.set_title(f"Race ({m})")
    return _svg(fig, "race", png_dir)


def over_time(frame: pd.DataFrame, png_dir: Path | None) -> str:
    """Faces and visitors per window (absolute time when known)."""
    absolute = "start_time" in frame and frame.start_time.notna().any()
    key = "start_time" if absolute else "window_start"
    series = frame.groupby(key)[["faces", "visitors"]].sum().sort_index()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = list(range(len(series)))
    width = 0.4
    ax.bar([i - width / 2 for i in x], series.faces, width, label="faces", color=COLORS["faces"])
    ax.bar([i + width / 2 for i in x], series.visitors, width, label="visitors",
           color=COLORS["visitors"])  # fmt: skip
    step = max(1, len(x) // 12)
    labels = [(v.strftime("%Y-%m-%d %H:%M") if absolute else f"{v:.0f} s") for v in series.index]
    ax.set_xticks(x[::step], labels[::step], rotation=30, ha="right")
    ax.legend()
    ax.set_title(
        "Faces and visitors per window" + (" (UTC)" if absolute else " (from source start)")
    )
    return _svg(fig, "over_time", png_dir)


def by_hour_and_day(frame: pd.DataFrame, png_dir: Path | None) -> str | None:
    """Visitors (or faces) by hour of day and by day of week; None without absolute times."""
    if "start_time" not in frame or not frame.start_time.notna().any():
        return None
    m = _measure(frame)
    times = pd.to_datetime(frame.start_time, utc=True)
    hours = frame.groupby(times.dt.hour)[m].sum().reindex(range(24), fill_value=0)
    days = frame.groupby(times.dt.day_of_week)[m].sum().reindex(range(7), fill_value=0)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3), gridspec_kw={"width_ratios": [3, 1.4]})
    a.bar(range(24), hours.to_numpy(), color=COLORS[m])
    a.set_xticks(range(0, 24, 3))
    a.set_xlabel("hour of day (UTC)")
    a.set_title(f"{m} by hour")
    b.bar(DAYS, days.to_numpy(), color=COLORS[m])
    b.set_title(f"{m} by day of week")
    return _svg(fig, "hour_day", png_dir)


def per_source(frame: pd.DataFrame, png_dir: Path | None) -> str:
    """Faces per source, split by gender."""
    counts = frame.pivot_table(
        index="source", columns="gender", values="faces", aggfunc="sum", fill_value=0
    ).reindex(columns=list(GENDER), fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False).index][:20]
    names = [Path(s).name[-40:] for s in counts.index]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    left = [0] * len(names)
    for g in GENDER:
        ax.barh(names, counts[g], left=left, color=COLORS[g], label=g)
        left = [lv + v for lv, v in zip(left, counts[g], strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("faces")
    ax.legend()
    ax.set_title("Per source (top 20 by faces)")
    return _svg(fig, "per_source", png_dir)


def _totals(data: ReportData) -> list[tuple[str, str]]:
    t = data.table
    rows = [
        ("sources", f"{t.source.nunique():,}"),
        ("faces", f"{int(t.faces.sum()):,}"),
        ("visitors", f"{int(t.visitors.sum()):,}"),
        ("windows", f"{len(t[['source', 'window_start']].drop_duplicates()):,}"),
    ]
    if "start_time" in t and t.start_time.notna().any():
        rows.append(("time range (UTC)", f"{t.start_time.min():%Y-%m-%d %H:%M} – "
                                          f"{t.start_time.max():%Y-%m-%d %H:%M}"))  # fmt: skip
    rows.append(
        (
            "suppressed",
            f"{data.suppressed_cells} cells with fewer than {data.min_cell_count} faces or "
            f"visitors ({data.suppressed_faces} faces, {data.suppressed_visitors} visitors)",
        )
    )
    return rows


def render(data: ReportData, *, png_dir: Path | None = None) -> str:
    """The report's HTML."""
    esc = html.escape
    sections: list[tuple[str, str]] = []
    if data.table.empty:
        why = "after suppression" if data.suppressed_cells else "yet: no stats rows"
        sections.append(("No data", f"<p>Nothing to show {why}.</p>"))
    else:
        sections += [
            ("Age and gender", pyramid(data.table, png_dir)),
            ("Race", race_bars(data.table, png_dir)),
            ("Over time", over_time(data.table, png_dir)),
        ]
        hd = by_hour_and_day(data.table, png_dir)
        if hd is not None:
            sections.append(("Hour of day and day of week", hd))
        sections.append(("Per source", per_source(data.table, png_dir)))
    totals = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _totals(data))
    body = "".join(f"<section><h2>{esc(t)}</h2>{svg}</section>" for t, svg in sections)
    config = html.escape(
        json.dumps(data.config, indent=2, sort_keys=True, default=str), quote=False
    )
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agr-batch report: {esc(Path(data.source_path).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: .2rem .8rem; }}
th {{ color: #555; font-weight: 600; }} svg {{ max-width: 100%; height: auto; }}
.note {{ background: #fff8e1; padding: .6rem 1rem; border-left: 4px solid #f0b400; }}
pre {{ background: #f6f8fa; padding: 1rem; overflow-x: auto; font-size: .8rem; }}
</style></head><body>
<h1>Demographic statistics — {esc(data.source_path)}</h1>
<p class="note">Age, gender and race are <em>perceived appearance</em> as predicted by a model
trained on FairFace's crowd-sourced annotations, not anyone's identity. Read them as aggregates.
Cells with fewer than {data.min_cell_count} faces or visitors are suppressed.</p>
<section><h2>Totals</h2><table>{totals}</table></section>
{body}
<section><h2>Configuration</h2><details><summary>recorded in the data's metadata</summary>
<pre>{config}</pre></details></section>
<p style="color:#888">Generated by agr-batch {__version__} on {generated}.</p>
</body></html>
"""


def _check_report_outputs(
    stats: str | os.PathLike[str],
    out: str | os.PathLike[str],
    png_dir: str | os.PathLike[str] | None,
) -> None:
    """Refuse a report written over its input or into the dataset it reads."""
    if Path(out).is_dir():
        raise OutputError(f"--out {out}: is a folder, not a file name")
    if Path(stats).exists() and same_file(out, stats):
        raise OutputError(f"--out {out}: is the input {stats}; refusing to overwrite it")
    if Path(stats).is_dir():
        # Readers take every file in a dataset folder for a part: an HTML page or PNGs
        # there would break them.
        for opt, target in (("--out", out), ("--png-dir", png_dir)):
            if target is not None and is_within(target, stats):
                raise OutputError(f"{opt} {target}: inside the dataset {stats}")


def build_report(
    stats: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    min_cell_count: int = DEFAULT_MIN_CELL_COUNT,
    png_dir: str | os.PathLike[str] | None = None,
) -> ReportData:
    """Write the HTML report of ``stats`` (file or dataset) to ``out`` atomically."""
    if min_cell_count < 0:
        raise ValueError(f"--min-cell-count must be >= 0, got {min_cell_count}")
    _check_report_outputs(stats, out, png_dir)
    frame, config = load_stats(stats)
    kept, dropped = suppress(frame, min_cell_count)
    data = ReportData(
        table=kept,
        config=config,
        source_path=str(stats),
        suppressed_cells=dropped["cells"],
        suppressed_faces=dropped["faces"],
        suppressed_visitors=dropped["visitors"],
        min_cell_count=min_cell_count,
    )
    page = render(data, png_dir=Path(png_dir) if png_dir else None)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return data
