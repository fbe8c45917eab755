"""Detection around the faces already tracked: where to look, and when to look everywhere.

A face in a video moves little between two samples half a second apart, so most frames need
not be searched whole: the detector runs on tiles around the tracked faces (each face's
predicted box grown by :attr:`RegionPolicy.margin` face sizes on every side) and on the
whole frame only every :attr:`RegionPolicy.redetect_s` seconds, which is when faces that
were not there before are found. MediaPipe's face pipeline and DeepStream's detector
``interval`` make the same trade; here the in-between frames still get real detections, with
landmarks to align a chip from, not boxes carried forward.

Tiles are cut from the frame after it is resized to the detector's working size, on the
network's 32-pixel grid, so a face is seen at the same scale and on the same grid as in a
whole-frame pass and only the context beyond the tile differs (landmarks within a pixel of
the whole-frame ones on the scene videos; BENCHMARKS.md). Overlapping tiles merge; all tiles
of a frame share one size, rounded up to 64 pixels, so the network sees few distinct shapes.

What it costs: a face that appears between two whole-frame passes is found at the next one,
up to ``redetect_s`` later, and someone in view for less than that may be missed. Sparse
samples (more than :attr:`RegionPolicy.max_step_s` apart, e.g. keyframes), frames whose size
differs from the frame before and frames without a time are always searched whole.

The schedule depends on the frames' times and sizes alone (a tile search that falls back to
the whole frame because its tiles would cover most of it does not move it), so the face step
knows which frames are searched whole before it has tracked the frames in between, and can
start those searches ahead (:class:`agr_batch.pipeline.faces.FaceStep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RegionPlanner", "RegionPolicy", "tiles_around"]

_GRID = 32  # CenterFace's coarsest stride: tiles start on it so the features line up
_QUANTUM = 64  # tile sides are rounded up to this, to bound the distinct input shapes


@dataclass(frozen=True)
class RegionPolicy:
    """When a frame is searched whole and how far around a tracked face a tile reaches.

    Attributes:
        redetect_s: Longest time, in seconds of the video, between two whole-frame
            searches; 0 searches every frame whole.
        margin: Tile reach beyond a face's predicted box, in face widths (heights) on
            each side.
        max_step_s: Frames further apart than this after the previous sampled frame are
            searched whole (a face may have moved beyond its tile).
        max_share: Tiles covering at least this share of the frame are not worth it: the
            frame is searched whole instead.
    """

    redetect_s: float = 1.0
    margin: float = 1.5
    max_step_s: float = 1.0
    max_share: float = 0.6

    def __post_init__(self) -> None:
        for name in ("redetect_s", "margin", "max_step_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 < self.max_share <= 1.0:
            raise ValueError(f"max_share must be in (0, 1], got {self.max_share!r}")

    @property
    def enabled(self) -> bool:
        """False when every frame is searched whole."""
        return self.redetect_s > 0


class RegionPlanner:
    """Decides, frame by frame of one source, between a whole-frame search and tiles.

    Args:
        policy: The schedule and reach.
    """

    def __init__(self, policy: RegionPolicy) -> None:
        self.policy = policy
        self._last_whole: float | None = None
        self._last_time: float | None = None
        self._last_size: tuple[int, ...] = ()

    def whole(self, time_s: float, size: tuple[int, ...] = ()) -> bool:
        """Whether the frame at ``time_s`` is searched whole (call once per frame, in order).

        A True answer starts the next interval: the caller searches that frame whole.

        Args:
            time_s: The frame's time.
            size: The frame's shape: when it changes mid-stream, the tracked boxes no longer
                say where to look.
        """
        p = self.policy
        previous, self._last_time = self._last_time, time_s
        resized, self._last_size = size != self._last_size, size
        whole = (
            not p.enabled
            or resized
            or not math.isfinite(time_s)  # no schedule without times: search everything
            or self._last_whole is None
            or previous is None
            or time_s - self._last_whole >= p.redetect_s
            or time_s < self._last_whole  # out of order: start the schedule again
            or time_s - previous > p.max_step_s
        )
        if whole:
            self._last_whole = time_s
        return whole


def tiles_around(
    boxes: np.ndarray, margin: float, width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """Tiles of a ``width`` x ``height`` network input that cover ``boxes`` with a margin.

    Args:
        boxes: (N, 4) x1, y1, x2, y2 in the network input's pixels.
        margin: Reach beyond each box, in box widths (heights) on each side.
        width: Input width, a multiple of 32.
        height: Input height, a multiple of 32.

    Returns:
        (x0, y0, x1, y1) tiles on the 32-pixel grid, all of one size (a multiple of 64 or
        the whole side), inside the input; empty for no boxes.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    rects: list[list[int]] = []
    for x1, y1, x2, y2 in boxes:
        bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        r = [x1 - margin * bw, y1 - margin * bh, x2 + margin * bw, y2 + margin * bh]
        x0 = int(min(max(r[0], 0), width) // _GRID * _GRID)
        y0 = int(min(max(r[1], 0), height) // _GRID * _GRID)
        xe = int(min(math.ceil(max(r[2], 0) / _GRID) * _GRID, width))
        ye = int(min(math.ceil(max(r[3], 0) / _GRID) * _GRID, height))
        if xe > x0 and ye > y0:
            rects.append([x0, y0, xe, ye])
    rects = _merged(rects)
    if not rects:
        return []
    tw = min(width, _round_up(max(r[2] - r[0] for r in rects)))
    th = min(height, _round_up(max(r[3] - r[1] for r in rects)))
    # Grown to the common size with the frame's own pixels (moved back inside at the edges):
    # more context rather than zeros, at no extra cost.
    tiles = []
    for x0, y0, _, _ in rects:
        x0, y0 = max(0, min(x0, width - tw)), max(0, min(y0, height - th))
        tiles.append((x0, y0, x0 + tw, y0 + th))
    return tiles


def _round_up(side: int) -> int:
    return math.ceil(side / _QUANTUM) * _QUANTUM


def _merged(rects: list[list[int]]) -> list[list[int]]:
    """Rectangles with every overlapping pair replaced by their bounding box, until none overlap."""
    changed = True
    while changed:
        changed = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del rects[j]
                    changed = True
                    break
            if changed:
                break
    return rects
