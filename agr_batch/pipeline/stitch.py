"""Joining the segments of a video back into one result, with whole visitors.

Each segment of a video (a :class:`~agr_batch.pipeline.work.WorkItem` window) is processed
with its own tracker over its window plus an overlap on each side, so consecutive segments
decode, detect and track the same sampled frames around their boundary (boundaries and
overlaps lie on the sampling grid). Their tracks are joined here:

* **Same person**: two tracks of consecutive segments are one person when they share a face:
  the same frame (``frame_index``) with boxes overlapping by IoU >= :data:`MATCH_IOU`. Links
  are transitive (union-find), so a person tracked across several boundaries is one track.
* **Faces counted once**: every face is kept only from the segment whose own window holds it
  (:meth:`~agr_batch.pipeline.work.WorkItem.owns`); the overlap's copies only link tracks.
  The faces are therefore those of a whole-file pass, frame for frame.
* **Votes**: the joined track's vote is the mean of the probabilities of every face that was
  classified in any of its parts — the voter's own rule — computed from each part's vote
  weighted by its number of classified faces. A face in an overlap that both segments
  classified counts twice in that mean. With per-face voting every kept face keeps its own
  prediction; otherwise every face carries the joined vote.
* **Ids**: joined tracks are renumbered 0, 1, ... by first appearance (ties: the order of the
  earliest segment's tracker, as in a whole-file pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from agr_batch.labels import HEADS
from agr_batch.pipeline import SourceResult
from agr_batch.pipeline.work import WorkItem
from agr_batch.records import Predictions, TrackResult

__all__ = ["MATCH_IOU", "stitch_segments"]

MATCH_IOU = 0.5
"""Boxes of the same frame with at least this IoU are the same face."""


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = float(w * h)
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def _link(uf: _UnionFind, left: list[int], right: list[int], tracks: list[TrackResult]) -> None:
    """Union the tracks of two consecutive segments that share a face."""
    faces: dict[int, list[tuple[int, np.ndarray]]] = {}
    for node in right:
        t = tracks[node]
        for i, frame in enumerate(t.frame_index.tolist()):
            faces.setdefault(frame, []).append((node, t.boxes[i]))
    for node in left:
        t = tracks[node]
        for i, frame in enumerate(t.frame_index.tolist()):
            for other, box in faces.get(frame, ()):
                if _iou(t.boxes[i], box) >= MATCH_IOU:
                    uf.union(node, other)


def stitch_segments(
    parts: Sequence[SourceResult], *, per_face: bool, duration_s: float | None
) -> SourceResult:
    """Join the results of a video's segments (in time order) into the video's result.

    Args:
        parts: One result per segment, in segment order; each ``item`` is its window.
        per_face: Faces carry their own predictions (``--per-face``), not the track's vote.
        duration_s: The video's duration (from probing it before it was cut).

    Returns:
        The whole video's result: joined tracks renumbered from 0, the frames of every
        window, the first error in time order (the partial tracks of a failed segment are
        kept, as for a whole file).
    """
    if not parts:
        raise ValueError("no segments to stitch")
    first = parts[0]
    tracks: list[TrackResult] = []
    owner: list[int] = []  # node -> part
    by_part: list[list[int]] = []
    for k, part in enumerate(parts):
        nodes = []
        for t in sorted(part.tracks, key=lambda t: t.track_id):
            nodes.append(len(tracks))
            tracks.append(t)
            owner.append(k)
        by_part.append(nodes)
    uf = _UnionFind(len(tracks))
    for k in range(len(parts) - 1):
        _link(uf, by_part[k], by_part[k + 1], tracks)
    groups: dict[int, list[int]] = {}
    for node in range(len(tracks)):
        groups.setdefault(uf.find(node), []).append(node)
    joined: list[tuple[TrackResult, int]] = []
    for nodes in groups.values():
        track = _join([tracks[n] for n in nodes], [parts[owner[n]].item for n in nodes], per_face)
        if track is not None:
            joined.append((track, min(nodes)))
    # By first appearance; ties in the order the earliest segment's tracker created them
    # (nodes are numbered segment by segment, in track id order).
    order = sorted(range(len(joined)), key=lambda i: (joined[i][0].first_time, joined[i][1]))
    renumbered = tuple(
        dataclasses.replace(joined[i][0], track_id=new) for new, i in enumerate(order)
    )
    item = WorkItem(first.item.media)
    return SourceResult(
        item,
        sum(p.frames for p in parts),
        duration_s,
        next((p.start_time for p in parts if p.start_time is not None), None),
        renumbered,
        next((p.error for p in parts if p.error is not None), None),
        max((p.processed_s for p in parts if p.processed_s is not None), default=None),
    )


def _join(members: list[TrackResult], items: list[WorkItem], per_face: bool) -> TrackResult | None:
    """One person's track from the tracks of several segments (None: no face of its own)."""
    keep = [
        np.array([item.owns(t) for t in m.time_s.tolist()], bool)
        for m, item in zip(members, items, strict=True)
    ]
    if not any(k.any() for k in keep):
        return None  # every face lies in another segment's window: counted there
    time_s = np.concatenate([m.time_s[k] for m, k in zip(members, keep, strict=True)])
    order = np.argsort(time_s, kind="stable")

    def cat(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays)[order]

    # Each part's vote is the mean over its classified faces: weighting by their number gives
    # the mean over all of them.
    weights = np.array([float(m.classified.sum()) for m in members])
    if weights.sum() == 0:
        weights = np.ones(len(members))
    weights /= weights.sum()

    def mean_vote(head: str) -> np.ndarray:
        votes = np.stack([getattr(m.vote, head)[0] for m in members]).astype(np.float64)
        return (weights @ votes)[None].astype(np.float32)

    vote = Predictions(*(mean_vote(h) for h in HEADS))
    n = int(sum(k.sum() for k in keep))
    if per_face:
        faces = Predictions(
            *(
                cat([getattr(m.face_predictions, h)[k] for m, k in zip(members, keep, strict=True)])
                for h in HEADS
            )
        )
    else:
        faces = Predictions(*(np.repeat(getattr(vote, h), n, axis=0) for h in HEADS))
    head = members[0]
    return TrackResult(
        source=head.source,
        kind=head.kind,
        start_time=next((m.start_time for m in members if m.start_time is not None), None),
        track_id=head.track_id,
        frame_index=cat([m.frame_index[k] for m, k in zip(members, keep, strict=True)]),
        time_s=time_s[order],
        boxes=cat([m.boxes[k] for m, k in zip(members, keep, strict=True)]),
        det_scores=cat([m.det_scores[k] for m, k in zip(members, keep, strict=True)]),
        face_predictions=faces,
        classified=cat([m.classified[k] for m, k in zip(members, keep, strict=True)]),
        vote=vote,
    )
