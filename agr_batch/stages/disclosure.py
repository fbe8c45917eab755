"""Small-cell suppression across the tables of a report.

A report shows several aggregations of one stats table: the total, age by gender, race, time
windows, hours of the day, days of the week, sources. Each is a *partition* of the table's
rows into cells. A cell is shown only if it holds at least K faces and at least K distinct
people (tracks), counted after the re-aggregation, never from the rows' own counts.

Suppressing small cells is not enough: a total minus the cells shown around a suppressed one
would give it back. Two cells that share rows are linked: for any two partitions A and B,
the rows fall into *components* (cells of A and B joined by shared rows) over which A's cells
and B's cells add up to the same number. So wherever B is published, the sum of A's
suppressed cells in a component is known. :func:`protect` therefore suppresses further cells
(complementary suppression, the smallest first) until, in every component of every pair of
partitions, the suppressed cells together hold at least K faces and K people, or none is
suppressed. The total is a partition of one cell, so "total minus what is shown" is covered.

Distinct people cannot be added across windows (one person is present in several), so the
count of a union of rows is a lower bound computed from what the rows hold
(:func:`people_lower_bound`): the people present in a row, and the visitors, who are counted
once, in the window where their track starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Rows:
    """The counts of each row of a stats table, as :func:`protect` needs them.

    Attributes:
        source: Source code per row (any integer naming the source).
        window: The row's window start, seconds (orders the windows of a source).
        faces: Faces per row; NaN where the row's counts were withheld upstream.
        visitors: Visitors per row (tracks starting in the row's window).
        people: Distinct people present per row; NaN where the table does not say.
        per_track_labels: Whether every face carries its track's labels (the default
            voting mode); False for ``--per-face`` tables, where one person's faces may
            fall into several label cells.
    """

    source: np.ndarray
    window: np.ndarray
    faces: np.ndarray
    visitors: np.ndarray
    people: np.ndarray
    per_track_labels: bool = True

    @property
    def live(self) -> np.ndarray:
        """Rows that count someone: faces, or (``--per-face``) visitors without a face."""
        return (np.nan_to_num(self.faces, nan=0.0) > 0) | (self.visitors > 0)

    @property
    def withheld(self) -> np.ndarray:
        """Rows whose counts were withheld when the table was written."""
        return np.isnan(self.faces)


@dataclass(frozen=True)
class Partition:
    """One aggregation of the rows: the cell of each row.

    Attributes:
        name: The chart or table it feeds.
        cell: Cell index per row, 0..n-1; -1 for a row outside this aggregation.
    """

    name: str
    cell: np.ndarray

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.cell.max()) + 1 if len(self.cell) and self.cell.max() >= 0 else 0


@dataclass(frozen=True)
class CellCounts:
    """What one partition's cells hold, and which are suppressed."""

    faces: np.ndarray
    people: np.ndarray
    visitors: np.ndarray
    withheld: np.ndarray
    suppressed: np.ndarray


def _nonempty(counts: CellCounts) -> np.ndarray:
    return (counts.faces > 0) | (counts.visitors > 0)


def people_lower_bound(rows: Rows, group: np.ndarray, n_groups: int) -> np.ndarray:
    """At least how many distinct people each group of rows holds.

    Args:
        rows: The table's counts.
        group: Group index per row (-1: in no group).
        n_groups: Number of groups.

    Returns:
        A lower bound per group. Per source (people of two sources are two tracks): with
        per-track labels, the larger of the most people present in one window and the
        visitors of the group plus the people already present in its first window; per
        face, the most people of one row.
    """
    take = (group >= 0) & rows.live
    out = np.zeros(n_groups, np.float64)
    if not take.any():
        return out
    visitors = rows.visitors[take].astype(np.float64)
    people = rows.people[take].astype(np.float64)
    # A table without the people column: the visitors starting in a row are present in it.
    people = np.where(np.isnan(people), visitors, people)
    frame = pd.DataFrame(
        {
            "g": group[take],
            "s": rows.source[take],
            "w": rows.window[take],
            "v": visitors,
            "p": people,
        }
    )
    if rows.per_track_labels:
        in_window = frame.groupby(["g", "s", "w"], sort=False).p.sum()
        most = in_window.groupby(level=["g", "s"]).max()
        first = frame.groupby(["g", "s"]).w.transform("min")
        # Present in the first window but started before it: not among the visitors.
        frame["before"] = np.where(frame.w == first, (frame.p - frame.v).clip(lower=0), 0.0)
        started = frame.groupby(["g", "s"])[["v", "before"]].sum()
        per_source = np.maximum(most, started.v + started.before)
    else:
        per_source = frame.groupby(["g", "s"]).p.max()
    per_group = per_source.groupby(level="g").sum()
    out[per_group.index.to_numpy(dtype=np.int64)] = per_group.to_numpy()
    return out


def _components(a: Partition, b: Partition, live: np.ndarray) -> np.ndarray:
    """Component index of each cell of ``a``: cells joined by rows they share with ``b``."""
    parent = np.arange(a.n_cells)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    both = live & (a.cell >= 0) & (b.cell >= 0)
    pairs = np.unique(np.stack([b.cell[both], a.cell[both]], axis=1), axis=0)
    anchor: dict[int, int] = {}
    for bc, ac in pairs.tolist():
        if bc in anchor:
            ra, rb = find(ac), find(anchor[bc])
            if ra != rb:
                parent[ra] = rb
        else:
            anchor[bc] = ac
    return np.array([find(i) for i in range(a.n_cells)], np.int64)


def _sums(rows: Rows, part: Partition) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = part.n_cells
    live = rows.live & (part.cell >= 0)
    faces = np.bincount(part.cell[live], np.nan_to_num(rows.faces[live]), minlength=n)
    visitors = np.bincount(part.cell[live], rows.visitors[live], minlength=n)
    held = rows.withheld & (part.cell >= 0)
    withheld = np.bincount(part.cell[held], minlength=n) > 0
    people = people_lower_bound(rows, part.cell, n)
    return faces, visitors, people, withheld


def protect(
    rows: Rows, partitions: Sequence[Partition], min_cell_count: int
) -> dict[str, CellCounts]:
    """Decide which cells of each partition are shown.

    Primary suppression: a cell that counts someone (faces, or visitors: with per-face
    labels a person's vote may fall where none of their faces does) but fewer than
    ``min_cell_count`` faces or people, or holding rows withheld upstream (its count would
    be short). Complementary suppression: see the module docstring. Empty cells are shown
    (zero reveals no one).

    Returns:
        Per partition name: the cells' faces, people (lower bound), visitors, whether they
        hold withheld rows, and whether each is suppressed.
    """
    counts: dict[str, CellCounts] = {}
    for part in partitions:
        faces, visitors, people, withheld = _sums(rows, part)
        if min_cell_count > 0:
            nonempty = (faces > 0) | (visitors > 0)
            small = nonempty & ((faces < min_cell_count) | (people < min_cell_count))
        else:
            small = np.zeros(part.n_cells, bool)
        counts[part.name] = CellCounts(faces, people, visitors, withheld, small | withheld)
    if min_cell_count <= 0 or not rows.live.any():
        return counts
    live = rows.live
    links = [
        (a, _components(a, b, live))
        for a in partitions
        for b in partitions
        if a is not b and a.n_cells
    ]
    changed = True
    while changed:
        changed = False
        for part, comp in links:
            cc = counts[part.name]
            # Only what counted rows add up to is published; withheld rows are in no sum.
            sup = cc.suppressed & _nonempty(cc)
            if not sup.any():
                continue
            n_comp = int(comp.max()) + 1
            row_group = np.where(part.cell >= 0, comp[np.maximum(part.cell, 0)], -1)
            row_group = np.where((part.cell >= 0) & sup[np.maximum(part.cell, 0)], row_group, -1)
            faces = np.bincount(comp[sup], cc.faces[sup], minlength=n_comp)
            people = people_lower_bound(rows, row_group, n_comp)
            has = np.bincount(comp[sup], minlength=n_comp) > 0
            weak = has & ((faces < min_cell_count) | (people < min_cell_count))
            for c in np.flatnonzero(weak).tolist():
                free = np.flatnonzero((comp == c) & ~cc.suppressed & _nonempty(cc))
                if free.size:
                    pick = free[np.argmin(cc.faces[free])]
                    cc.suppressed[pick] = True
                    changed = True
    return counts
