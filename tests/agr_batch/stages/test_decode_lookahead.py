"""Exact frame skipping: the same frames, times and indices as a full decode, fewer decoded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from agr_batch.stages.decode import video as video_module
from agr_batch.stages.decode.lookahead import ExactSkip
from agr_batch.stages.decode.video import Sampler, video_frames
from tests import media


@dataclass(frozen=True)
class FakePacket:
    pts: int | None
    is_discard: bool = False


def _two_fps() -> ExactSkip:
    return ExactSkip(Sampler(2.0, rate=30.0).take, lambda pts: pts / 30.0, window=4)


def _run(skip: ExactSkip, pts: list[int | None]) -> list[tuple[int | None, bool]]:
    out = []
    for p in pts:
        out += [(q.pts, s) for q, s in skip.push(FakePacket(p))]
    out += [(q.pts, s) for q, s in skip.flush()]
    return out


# x264's decode order with B-frames: I P B B B P B B B ... (presentation 0 4 1 2 3 8 5 6 7 ...)
DECODE_ORDER = [0, *[x for g in range(1, 16) for x in (4 * g, 4 * g - 3, 4 * g - 2, 4 * g - 1)]]


def test_marks_exactly_the_frames_the_sampler_does_not_take():
    skip = _two_fps()
    released = _run(skip, DECODE_ORDER)
    assert [p for p, _ in released] == DECODE_ORDER  # decode order kept, nothing lost
    kept = sorted(p for p, s in released if not s)
    # 2 fps of 30 fps: frames 0, 15, 30, 45, 60 are taken; every other frame may be skipped.
    assert kept == [p for p in DECODE_ORDER if p % 15 == 0 and p <= 60]
    assert skip.active and skip.marked == len(DECODE_ORDER) - len(kept)
    # Frames come out in presentation order; indices are their places in the full stream,
    # though the frames in between were never decoded.
    assert [skip.index(p) for p in (0, 15, 30, 60)] == [0, 15, 30, 60]


@pytest.mark.parametrize(
    ("pts", "why"),
    [
        ([0, 8, 4, None, 12, 16, 20, 24], "no time"),
        ([0, 4, 4, 8, 12, 16, 20, 24], "repeated time"),
        ([0, 40, 4, 8, 12, 16, 20, 24, 28, 32, 36, 2], "reordered deeper than the window"),
    ],
)
def test_anything_it_would_guess_turns_skipping_off(pts, why):
    skip = _two_fps()
    released = _run(skip, pts)
    assert not skip.active, why
    assert [p for p, _ in released] == pts
    # From the packet that broke the look-ahead on, every frame is decoded.
    first_bad = next(i for i, p in enumerate(pts) if p is None or p in pts[:i] or p == 2)
    assert not any(s for _, s in released[max(0, first_bad - 4) :])


def test_a_sampled_frame_the_decoder_drops_turns_skipping_off():
    skip = _two_fps()
    released = _run(skip, DECODE_ORDER[:9])
    assert released and skip.active
    # Frame 0 was sampled, but the first frame out of the decoder is 1.
    assert skip.index(1) == 1
    assert not skip.active


def test_discarded_packets_are_decoded_and_have_no_place():
    skip = _two_fps()
    pts = [-8, -4, 0, *[p + 1 for p in DECODE_ORDER[1:]]]
    flags = [True, True] + [False] * (len(pts) - 2)
    out = []
    for p, d in zip(pts, flags, strict=True):
        out += skip.push(FakePacket(p, d))
    out += skip.flush()
    assert [(q.pts, s) for q, s in out[:2]] == [(-8, False), (-4, False)]
    assert skip.active and skip.index(0) == 0 and skip.index(16) == 15


def _frames(path: Path, **kw) -> list[tuple[int, float, str]]:
    return [
        (f.frame_index, round(f.time_s, 6), hashlib.md5(f.image.tobytes()).hexdigest())
        for f in video_frames(path, **kw)
    ]


@pytest.fixture()
def counted(monkeypatch):
    """Every ExactSkip made, to see how many packets it let the decoder drop."""
    made: list[ExactSkip] = []

    class Counted(ExactSkip):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(video_module, "ExactSkip", Counted)
    return made


def _full_decode(monkeypatch, path: Path, **kw) -> list[tuple[int, float, str]]:
    with monkeypatch.context() as m:
        m.setattr(video_module, "_exact_skip_applies", lambda container, stream: False)
        return _frames(path, **kw)


@pytest.fixture(scope="module")
def bframe_clip(tmp_path_factory, t1_rgb: np.ndarray) -> Path:
    """4 s of a panning picture with stamped frame numbers; x264 with B-frames."""
    path = tmp_path_factory.mktemp("bframes") / "pan.mp4"
    media.make_video(path, [t1_rgb], fps=30, seconds=4, size=(320, 240), pan=True, gop=60)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.has_b_frames
    return path


@pytest.mark.parametrize(
    "kw",
    [
        {"sample_fps": 2.0},
        {"sample_fps": 7.0},
        {"sample_fps": 0.5, "start": 1.3, "end": 3.1},
        {"sample_fps": None, "start": 2.5},
    ],
    ids=["2fps", "7fps", "window", "every-frame-after-start"],
)
def test_same_frames_as_a_full_decode(monkeypatch, counted, bframe_clip, kw):
    full = _full_decode(monkeypatch, bframe_clip, **kw)
    assert _frames(bframe_clip, **kw) == full
    assert counted and counted[-1].active and counted[-1].marked > 0
    # The stamped numbers prove the indices are the frames' own, not a count of decoded ones.
    for frame in video_frames(bframe_clip, **kw):
        assert media.read_frame_number(frame.image) == frame.frame_index


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("vfr.mp4", {"vfr": True}),
        ("pan.mkv", {"pan": True}),
        ("baseline.mp4", {"preset": "ultrafast"}),  # no B-frames: nothing to drop
    ],
)
def test_other_timings_and_containers_match_a_full_decode(monkeypatch, tmp_path, t1_rgb, name, kw):
    path = tmp_path / name
    media.make_video(path, [t1_rgb], fps=30, seconds=3, size=(320, 240), **kw)
    assert _frames(path, sample_fps=3.0) == _full_decode(monkeypatch, path, sample_fps=3.0)


def test_frames_an_edit_list_hides_are_not_counted(monkeypatch, counted, tmp_path, bframe_clip):
    cut = media.make_edit_listed(bframe_clip, tmp_path / "cut.mp4", hidden=7)
    with av.open(str(cut)) as c:
        assert sum(p.is_discard for p in c.demux(video=0)) == 7
    for kw in ({"sample_fps": 2.0}, {"sample_fps": 7.0}, {"sample_fps": None, "start": 1.0}):
        assert _frames(cut, **kw) == _full_decode(monkeypatch, cut, **kw)
    assert counted and all(c.active and c.marked > 0 for c in counted)


@pytest.mark.parametrize("name", ["clip.ts", "clip.avi"])
def test_not_used_where_a_packet_may_not_be_a_whole_frame(counted, tmp_path, t1_rgb, name):
    path = tmp_path / name
    media.make_video(path, [t1_rgb], fps=30, seconds=1, size=(160, 120))
    assert len(_frames(path, sample_fps=2.0)) == 2
    assert counted == []


def test_not_used_with_every_frame_or_the_other_skip_modes(counted, bframe_clip):
    for kw in ({"sample_fps": None}, {"keyframes_only": True}, {"skip_nonref": True}):
        assert _frames(bframe_clip, **kw)
    assert counted == []


def test_truncated_file_keeps_its_good_frames(monkeypatch, counted, tmp_path, noisy_clip):
    cut = media.make_truncated(noisy_clip.path, tmp_path / "cut.mp4", 0.9)

    def read(**kw) -> list[tuple[int, float, str]]:
        got = []
        with pytest.raises(video_module.SourceError, match=r"cut\.mp4"):
            for frame in video_frames(cut, sample_fps=7.0, **kw):
                got.append((frame.frame_index, frame.time_s, frame.image.tobytes()))
        return got

    skipped = read()
    assert counted and counted[0].marked > 0
    monkeypatch.setattr(video_module, "_exact_skip_applies", lambda container, stream: False)
    full = read()
    assert len(full) >= 10 and skipped == full


def test_one_decoder_thread_gives_the_same_frames(bframe_clip):
    assert _frames(bframe_clip, sample_fps=3.0, threads=1) == _frames(bframe_clip, sample_fps=3.0)
