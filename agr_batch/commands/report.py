"""``agr-batch report``: one self-contained HTML file with charts from a stats table or dataset.

The page makes no external requests: charts are inline SVG drawn with matplotlib, styles are
inline, and there is no script. Every chart is aggregated first and suppressed after
(:mod:`agr_batch.stages.disclosure`): a cell is shown only if it holds at least K distinct people
and K faces, and no total minus shown cells gives a suppressed one back. Paths are shown
relative (sources to their common folder), never as absolute local paths.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from agr_batch import __version__
from agr_batch.clock import resolve_tz, tz_label
from agr_batch.commands import charts
from agr_batch.commands.charts import Cells
from agr_batch.labels import AGE, GENDER, RACE
from agr_batch.stages.aggregate import STATS_SCHEMA, everything_suppressed
from agr_batch.stages.disclosure import CellCounts, Partition, Rows, protect
from agr_batch.storage.safety import OutputError, is_within, same_file
from agr_batch.storage.sinks import METADATA_KEY, atomic_path

log = logging.getLogger(__name__)

DEFAULT_MIN_CELL_COUNT = 5
"""Reports are shared, so by default cells of fewer than 5 people or faces are suppressed."""

MAX_SOURCES = 40
"""The per-source chart shows this many sources at most (by name)."""


@dataclass(frozen=True)
class ReportData:
    """A stats table, its suppressed charts and what describes them.

    Attributes:
        table: The stats rows read.
        config: The configuration recorded in the data (absolute paths redacted).
        source_path: The input, as the page names it (relative or redacted).
        min_cell_count: K: the fewest people and faces a shown cell holds.
        tz_name: The IANA time zone of the time charts (None: local time).
        cells: Each chart's cells after suppression, by chart name.
        footage_s: Seconds of footage processed per over-time window, when recorded.
        absolute: Whether the windows have absolute times.
        window_s: The windows' length, seconds.
    """

    table: pd.DataFrame
    config: dict[str, Any]
    source_path: str
    min_cell_count: int
    tz_name: str | None = None
    cells: dict[str, Cells] = field(default_factory=dict)
    footage_s: np.ndarray | None = None
    absolute: bool = False
    window_s: float = 60.0

    @property
    def tz(self) -> str:
        """The time zone as the page names it."""
        return tz_label(self.tz_name)

    @property
    def faces(self) -> int:
        """Faces in the table (shown or not)."""
        return int(np.nansum(self.table.faces.to_numpy(dtype=float))) if len(self.table) else 0

    @property
    def suppressed_cells(self) -> int:
        """Cells suppressed over all charts (the totals included)."""
        return sum(int(c.suppressed.sum()) for c in self.cells.values())

    @property
    def everything_suppressed(self) -> bool:
        """Faces were seen, yet no chart shows a cell that holds any."""
        if not self.faces:
            return False
        return not any((~c.suppressed & c.nonempty).any() for c in self.cells.values())

    @property
    def notice(self) -> str | None:
        """Why nothing is shown, and which option changes it (None when something is)."""
        if not self.everything_suppressed:
            return None
        return everything_suppressed(self.min_cell_count, faces=self.faces, where="the report")

    def summary_line(self, out: str | os.PathLike[str]) -> str:
        """What the CLI prints after writing the page."""
        return (
            f"wrote {out}: {self.faces} faces; {self.suppressed_cells} small cells suppressed "
            f"(--min-cell-count {self.min_cell_count})"
        )


def load_stats(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a stats Parquet file or a scanned dataset folder, with its recorded configuration.

    Parts written by different versions are read with their schemas unified (a column a
    part lacks is null there).

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
            schemas = [pq.read_schema(f).remove_metadata() for f in dataset.files]
            if any(s != schemas[0] for s in schemas):
                unified = pa.unify_schemas([dataset.schema.remove_metadata(), *schemas])
                dataset = pads.dataset(path, partitioning="hive", schema=unified)
            table = dataset.to_table()
            meta = pq.read_schema(dataset.files[0]).metadata or {}
        elif not path.is_file():
            raise ValueError(f"{path}: not a regular file")
        else:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
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


# ---------------------------------------------------------------------------------------------
# Paths: relative, or redacted


def display_path(path: str) -> str:
    """``path`` as a page may show it, never as an absolute local path.

    Relative paths are shown as given; absolute ones relative to the working folder when
    inside it, else as their name alone.
    """
    if not os.path.isabs(path):
        return path
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return f"…/{PurePath(path).name}"


def source_names(sources: list[str]) -> dict[str, str]:
    """Each source by its path relative to the sources' common folder.

    Two ``video.mp4`` in different camera folders stay two names (``camA/video.mp4``,
    ``camB/video.mp4``); relative paths are shown as given.
    """
    absolute = [s for s in sources if os.path.isabs(s)]
    names = {s: s for s in sources if not os.path.isabs(s)}
    if absolute:
        root = os.path.commonpath([os.path.dirname(s) for s in absolute])
        names.update({s: os.path.relpath(s, root) for s in absolute})
    return names


def redact(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute path made relative or reduced to its name."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        return display_path(value)
    return value


# ---------------------------------------------------------------------------------------------
# Aggregation and suppression


def _window_s(frame: pd.DataFrame, config: dict[str, Any]) -> float:
    value = config.get("window_s")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    spans = (frame.window_end - frame.window_start).to_numpy(dtype=float)
    spans = spans[spans > 0]
    return float(spans.max()) if spans.size else 60.0


def _buckets(frame: pd.DataFrame, tz: dt.tzinfo, window_s: float) -> tuple[pd.Series, bool]:
    """Each row's window on one time axis: local wall time floored to the window grid."""
    if "start_time" in frame and frame.start_time.notna().any():
        local = pd.to_datetime(frame.start_time, utc=True).dt.tz_convert(tz).dt.tz_localize(None)
        return local.dt.floor(pd.Timedelta(seconds=window_s)), True
    return frame.window_start.astype(float), False


def _cells(order: list[Any], counts: CellCounts, *, names: tuple[str, ...] = ()) -> Cells:
    """A chart's cells in ``order``; cells no row falls into are empty (shown as zero)."""
    n = len(order)

    def padded(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, np.zeros(n - len(values), values.dtype)])[:n]

    index = pd.MultiIndex.from_tuples(order, names=names) if names else pd.Index(order)
    table = pd.DataFrame(
        {
            "faces": padded(counts.faces),
            "visitors": padded(counts.visitors),
            "suppressed": padded(counts.suppressed),
            "withheld": padded(counts.withheld),
            "people": padded(counts.people),  # a lower bound
        },
        index=index,
    )
    nonempty = (table.faces > 0) | (table.visitors > 0)
    hidden = int((table.suppressed & nonempty & ~table.withheld).sum())
    notes = []
    if hidden:
        notes.append(f"{hidden} of {int(nonempty.sum())} non-empty cells suppressed")
    withheld = int(table.withheld.sum())
    if withheld:
        notes.append(f"{withheld} cell{'s' * (withheld != 1)} hidden because the stats table "
                     "withheld some of the counts (its own --min-cell-count)")  # fmt: skip
    return Cells(table, "; ".join(notes) or None)


def _codes(values: pd.Series, order: list[Any]) -> np.ndarray:
    index = {v: i for i, v in enumerate(order)}
    return np.array([index.get(v, -1) for v in values], np.int64)


MAX_GRID = 2000
"""Over time, windows without rows are drawn (as no footage) when the grid has at most this
many windows; longer spans show only the windows that have rows."""


@dataclass(frozen=True)
class Layout:
    """How the rows of a stats table fall into the cells of each chart.

    Attributes:
        rows: The rows' counts, for suppression.
        specs: Per chart: the cell of each row (-1: none) and the cells' keys, in order.
        buckets: Each row's window on the report's time axis.
        absolute: Whether that axis is absolute time (else seconds from each source's start).
        window_s: The windows' length, seconds.
    """

    rows: Rows
    specs: dict[str, tuple[np.ndarray, list[Any]]]
    buckets: pd.Series
    absolute: bool
    window_s: float


def _grid(buckets: pd.Series, absolute: bool, window_s: float) -> list[Any]:
    """The time axis: every window from the first to the last when they lie on one grid."""
    present = sorted(buckets.dropna().unique().tolist())
    if not present:
        return present
    if absolute:
        span = (present[-1] - present[0]).total_seconds() / window_s
        if span < MAX_GRID:
            full = pd.date_range(present[0], present[-1], freq=pd.Timedelta(seconds=window_s))
            if set(present) <= set(full):
                return list(full)
    else:
        steps = np.round(np.asarray(present) / window_s, 6)
        if (steps == np.round(steps)).all() and steps[-1] - steps[0] < MAX_GRID:
            return [k * window_s for k in range(int(steps[0]), int(steps[-1]) + 1)]
    return present


def layout(frame: pd.DataFrame, config: dict[str, Any], *, tz: dt.tzinfo) -> Layout:
    """Assign every row of ``frame`` to its cell in each chart."""
    window_s = _window_s(frame, config)
    buckets, absolute = _buckets(frame, tz, window_s)
    names = source_names(sorted(frame.source.unique().tolist()))
    display = frame.source.map(names)
    # Unknown (no configuration recorded): assume one person's faces may span label cells.
    per_face = bool((config.get("vote") or {"per_face": True}).get("per_face", True))
    people = (
        frame.people.to_numpy(dtype=np.float64, na_value=np.nan)
        if "people" in frame
        else np.full(len(frame), np.nan)
    )
    rows = Rows(
        source=pd.factorize(frame.source)[0],
        window=frame.window_start.to_numpy(dtype=np.float64),
        faces=frame.faces.to_numpy(dtype=np.float64, na_value=np.nan),
        visitors=frame.visitors.fillna(0).to_numpy(dtype=np.float64),
        people=people,
        per_track_labels=not per_face,
    )
    pyramid_order = [(a, g) for a in AGE for g in GENDER]
    time_order = _grid(buckets, absolute, window_s)
    source_order = sorted(set(display))
    specs: dict[str, tuple[np.ndarray, list[Any]]] = {
        "totals": (np.zeros(len(frame), np.int64), ["all"]),
        "pyramid": (
            _codes(pd.Series(list(zip(frame.age, frame.gender, strict=True))), pyramid_order),
            pyramid_order,
        ),
        "race": (_codes(frame.race, list(RACE)), list(RACE)),
        "over_time": (_codes(buckets, time_order), time_order),
        "per_source": (_codes(display, source_order), source_order),
    }
    if absolute:
        # A row without an absolute time (none known for its source) is in no time chart.
        specs["hour"] = (buckets.dt.hour.fillna(-1).to_numpy(np.int64), list(range(24)))
        specs["day"] = (buckets.dt.day_of_week.fillna(-1).to_numpy(np.int64), list(range(7)))
    return Layout(rows, specs, buckets, absolute, window_s)


def aggregate(
    frame: pd.DataFrame, config: dict[str, Any], *, min_cell_count: int, tz: dt.tzinfo
) -> tuple[dict[str, Cells], np.ndarray | None, bool, float]:
    """Every chart's cells, suppressed together; footage per window; absolute; window."""
    lay = layout(frame, config, tz=tz)
    partitions = [Partition(name, cell) for name, (cell, _) in lay.specs.items()]
    counts = protect(lay.rows, partitions, min_cell_count)
    cells = {
        name: _cells(order, counts[name], names=("age", "gender") if name == "pyramid" else ())
        for name, (_, order) in lay.specs.items()
    }
    footage = None
    if "footage_s" in frame and frame.footage_s.notna().any():
        windows = pd.DataFrame({"b": lay.buckets, "s": frame.source, "w": frame.window_start,
                                "f": frame.footage_s}).drop_duplicates(["s", "w"])  # fmt: skip
        per_bucket = windows.groupby("b").f.sum()
        footage = per_bucket.reindex(lay.specs["over_time"][1]).fillna(0).to_numpy(float)
    return cells, footage, lay.absolute, lay.window_s


def build_data(
    frame: pd.DataFrame,
    config: dict[str, Any],
    *,
    source_path: str,
    min_cell_count: int,
    tz_name: str | None,
) -> ReportData:
    """Aggregate and suppress ``frame`` for the page."""
    tz = resolve_tz(tz_name)
    cells: dict[str, Cells] = {}
    footage, absolute, window_s = None, False, 60.0
    if len(frame):
        cells, footage, absolute, window_s = aggregate(
            frame, config, min_cell_count=min_cell_count, tz=tz
        )
    return ReportData(
        table=frame,
        config=redact(config),
        source_path=display_path(str(source_path)),
        min_cell_count=min_cell_count,
        tz_name=tz_name,
        cells=cells,
        footage_s=footage,
        absolute=absolute,
        window_s=window_s,
    )


# ---------------------------------------------------------------------------------------------
# The page


def _measure(data: ReportData) -> str:
    return "visitors" if data.table.visitors.fillna(0).sum() > 0 else "faces"


def _chart_sections(data: ReportData, png_dir: Path | None) -> list[tuple[str, str]]:
    """(title, HTML) of each chart; a chart whose every non-empty cell is suppressed says so."""
    k, measure, out, cells = data.min_cell_count, _measure(data), [], data.cells

    def section(title: str, shown: list[Cells], make: Any, png: str) -> None:
        live = np.concatenate([c.nonempty for c in shown])
        hidden = np.concatenate([c.suppressed for c in shown])
        if live.any() and hidden[live].all():
            out.append((title, f'<p class="empty">All cells of this chart are suppressed: '
                        f"each holds fewer than {k} people or {k} faces, or would give such a "
                        "cell away (total minus the others).</p>"))  # fmt: skip
            return
        notes = "; ".join(c.note for c in shown if c.note)
        note = f'<p class="small">{html.escape(notes)}.</p>' if notes else ""
        out.append((title, charts.to_svg(make(), png, png_dir) + note))

    section("Age and gender", [cells["pyramid"]],
            lambda: charts.pyramid(cells["pyramid"], AGE, measure), "age_pyramid")  # fmt: skip
    section("Race", [cells["race"]], lambda: charts.race_bars(cells["race"], measure), "race")
    section("Over time", [cells["over_time"]], lambda: charts.over_time(
        cells["over_time"], data.footage_s, absolute=data.absolute, window_s=data.window_s,
        tz_name=data.tz), "over_time")  # fmt: skip
    out[-1] = (out[-1][0], out[-1][1] + '<p class="small">Visitors are counted once, in the '
               "window where they are first seen. Footage is the time processed: a window with "
               "footage and no faces had nobody in view; a window without footage was not "
               "recorded or not processed.</p>")  # fmt: skip
    if "hour" in cells:
        section("Hour of day and day of week", [cells["hour"], cells["day"]],
                lambda: charts.hour_and_day(cells["hour"], cells["day"], tz_name=data.tz),
                "hour_day")  # fmt: skip
    sources = cells["per_source"]
    if len(sources.frame) > MAX_SOURCES:
        note = f"the first {MAX_SOURCES} of {len(sources.frame)} sources, by name"
        sources = Cells(
            sources.frame.iloc[:MAX_SOURCES], "; ".join(filter(None, [sources.note, note]))
        )
    section("Per source", [sources], lambda: charts.per_source(sources), "per_source")
    return out


def _model_notes(config: dict[str, Any]) -> tuple[str, str]:
    """The sentence naming the model truthfully, and a warning block for a synthetic one."""
    model = config.get("model_training") or {}
    arch = html.escape(str(config.get("arch", "unknown")))
    dataset = model.get("dataset")
    if model.get("synthetic"):
        return (
            f"a model (<code>{arch}</code>) trained on synthetic drawn faces",
            '<p class="warn"><strong>Synthetic model.</strong> The model was trained on '
            "<code>agr-train synth</code>'s cartoon faces, not on photos of people: its age, "
            "gender and race labels are <strong>meaningless</strong>. The counts of faces, "
            "visitors and footage are real.</p>",
        )
    if dataset:
        return f"a model (<code>{arch}</code>) trained on {html.escape(str(dataset))}", ""
    note = model.get("note")
    what = f" ({html.escape(str(note))})" if note else ""
    return f"a model (<code>{arch}</code>) whose training data is not recorded{what}", ""


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _totals(data: ReportData) -> list[tuple[str, str]]:
    t, k = data.table, data.min_cell_count
    rows = [("sources", f"{t.source.nunique():,}")]
    total = data.cells.get("totals")
    visitors = int(t.visitors.fillna(0).sum()) if len(t) else 0
    withheld = total is not None and bool(total.frame.withheld.iloc[0])
    small = total is not None and bool(total.suppressed[0])
    if small and withheld:  # hidden for its withheld rows, or also for being small?
        row = total.frame.iloc[0]
        small = k > 0 and (row.faces < k or row.people < k)
    if small:
        rows.append(("faces, visitors", f"suppressed: fewer than {k} people or {k} faces"))
    elif withheld:  # the table's own suppression withheld some windows' counts
        rows += [("faces", f"at least {data.faces:,}"), ("visitors", f"at least {visitors:,}")]
    else:
        rows += [("faces", f"{data.faces:,}"), ("visitors", f"{visitors:,}")]
    rows.append(("windows", f"{len(t[['source', 'window_start']].drop_duplicates()):,}"))
    if data.footage_s is not None:
        rows.append(("footage processed", _duration(float(np.sum(data.footage_s)))))
    if data.absolute:
        times = pd.to_datetime(t.start_time, utc=True).dt.tz_convert(resolve_tz(data.tz_name))
        rows.append(("time range", f"{times.min():%Y-%m-%d %H:%M} – {times.max():%Y-%m-%d %H:%M}"))
    rows.append(("time zone", data.tz))
    if k > 0:
        rows.append(("suppression", f"cells with fewer than {k} distinct people or {k} faces, "
                     f"and cells hiding them: {data.suppressed_cells} cells"))  # fmt: skip
    else:
        rows.append(("suppression", "none (--min-cell-count 0): every cell is shown"))
    return rows


def render(data: ReportData, *, png_dir: Path | None = None) -> str:
    """The report's HTML."""
    esc = html.escape
    k = data.min_cell_count
    sections: list[tuple[str, str]] = []
    if data.table.empty:
        sections.append(("No data", "<p>Nothing to show yet: no stats rows.</p>"))
    elif data.everything_suppressed:
        sections.append(("Everything suppressed", f"<p>{esc(data.notice or '')}.</p>"
                         f"<p>Run <code>agr-batch report … --min-cell-count N</code> with a "
                         f"smaller N to show more (0 shows every cell, for private use "
                         f"only), or report on more footage or longer windows.</p>"))  # fmt: skip
    else:
        sections += _chart_sections(data, png_dir)
    totals = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in _totals(data))
    body = "".join(f"<section><h2>{esc(t)}</h2>{svg}</section>" for t, svg in sections)
    config = json.dumps(data.config, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    config = esc(config, quote=False)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model, warning = _model_notes(data.config)
    if k > 0:
        rule = (f"A cell is shown only if it holds at least {k} distinct people and {k} faces; "
                "a few more are hidden where totals minus the cells shown would reveal a "
                "suppressed one. Suppressed cells are grey hatched bands.")  # fmt: skip
    else:
        rule = "Nothing is suppressed (--min-cell-count 0): small groups can be singled out."
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>agr-batch report: {esc(PurePath(data.source_path).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: .2rem .8rem; }}
th {{ color: #555; font-weight: 600; }} svg {{ max-width: 100%; height: auto; }}
.note {{ background: #fff8e1; padding: .6rem 1rem; border-left: 4px solid #f0b400; }}
.warn {{ background: #fdecea; padding: .6rem 1rem; border-left: 4px solid #d93025; }}
.small {{ color: #666; font-size: .85rem; }} .empty {{ color: #666; font-style: italic; }}
pre {{ background: #f6f8fa; padding: 1rem; overflow-x: auto; font-size: .8rem; }}
</style></head><body>
<h1>Demographic statistics — {esc(data.source_path)}</h1>
<p class="note">Age, gender and race are <em>perceived appearance</em> in FairFace's
categories, predicted by {model}; not anyone's identity. Read them as aggregates.
{esc(rule)}</p>
{warning}
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
    tz: str | None = None,
) -> ReportData:
    """Write the HTML report of ``stats`` (file or dataset) to ``out`` atomically.

    Args:
        stats: A stats table or a scanned dataset folder.
        out: The HTML file.
        min_cell_count: K: suppress cells with fewer than K distinct people or K faces.
        png_dir: Also save each chart shown as PNG there.
        tz: IANA time zone of the time charts (None: this system's local time).
    """
    if min_cell_count < 0:
        raise ValueError(f"--min-cell-count must be >= 0, got {min_cell_count}")
    resolve_tz(tz)  # an unknown zone fails before anything is read
    _check_report_outputs(stats, out, png_dir)
    frame, config = load_stats(stats)
    data = build_data(
        frame, config, source_path=str(stats), min_cell_count=min_cell_count, tz_name=tz
    )
    page = render(data, png_dir=Path(png_dir) if png_dir else None)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return data
