"""The TorchCodec decoder takes PyAV's frames, with PyAV's times and start time.

TorchCodec decodes on an NVIDIA GPU, so on the CPU a stand-in plays its part: it decodes the
file with PyAV and answers ``get_frames_at(indices=...)`` with a batch of (N, H, W, 3) uint8
tensors, as TorchCodec's ``VideoDecoder(dimension_order="NHWC")`` does. Which frames are asked
for, their ``time_s``, ``frame_index`` and ``start_time`` are the product's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import WorkItem
from agr_batch.pipeline.frames import open_frames
from agr_batch.stages.decode import torchcodec
from agr_batch.stages.decode.media import MediaFile, SourceError
from agr_batch.stages.decode.torchcodec import torchcodec_frames
from agr_batch.stages.decode.video import video_frames
from tests import media


@dataclass
class _FrameBatch:
    data: torch.Tensor
    pts_seconds: torch.Tensor


class _FakeVideoDecoder:
    """TorchCodec's ``VideoDecoder`` in exact seek mode: frames indexed in presentation order."""

    def __init__(self, path: Path, device: str) -> None:
        self.device = device
        self.asked: list[int] = []
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
        self._pts = [t for t, _ in decoded]
        self._frames = [rgb for _, rgb in decoded]

    def get_frames_at(self, indices: list[int]) -> _FrameBatch:
        self.asked += indices
        data = torch.from_numpy(np.stack([self._frames[i] for i in indices])).to(self.device)
        return _FrameBatch(data, torch.tensor([self._pts[i] for i in indices]))


def _compare(path: Path, **kw) -> tuple[list, list[_FakeVideoDecoder]]:
    want = list(video_frames(path, **kw))
    opened: list[_FakeVideoDecoder] = []

    def factory(p: Path, device: str) -> _FakeVideoDecoder:
        opened.append(_FakeVideoDecoder(p, device))
        return opened[-1]

    got = list(torchcodec_frames(path, device="cpu", factory=factory, **kw))
    assert [f.frame_index for f in got] == [f.frame_index for f in want]
    assert [f.time_s for f in got] == [f.time_s for f in want]
    assert [f.start_time for f in got] == [f.start_time for f in want]
    for g, w in zip(got, want, strict=True):
        assert isinstance(g.image, np.ndarray) and np.array_equal(g.image, w.image)
    return got, opened


def test_times_frames_and_start_time_equal_pyav(clip_3s):
    got, opened = _compare(clip_3s.path, sample_fps=2)
    assert [media.read_frame_number(f.image) for f in got] == [0, 15, 30, 45, 60, 75]
    assert got[0].start_time.isoformat() == "2024-05-06T07:08:09+00:00"
    # Only the sampled frames were decoded.
    assert opened[0].asked == [0, 15, 30, 45, 60, 75]
    _compare(clip_3s.path, sample_fps=0)
    _compare(clip_3s.path, sample_fps=5, start=1.0, end=2.0)


def test_variable_frame_rate_matroska_and_mtime_start(tmp_path):
    vfr = media.make_video(tmp_path / "vfr.mp4", seconds=1.0, size=(256, 160), vfr=True)
    _compare(vfr.path, sample_fps=0)
    _compare(vfr.path, sample_fps=4)
    got, _ = _compare(vfr.path, sample_fps=0)
    assert got[0].start_time is not None  # the file's mtime: no creation_time written
    # x264's veryfast preset writes B-frames: decode order is not presentation order.
    bframes = media.make_video(tmp_path / "b.mkv", seconds=2.0, size=(256, 160), pan=True)
    _compare(bframes.path, sample_fps=3)


def test_rotated_video_comes_out_upright_as_with_pyav(tmp_path):
    rotated = media.make_video(
        tmp_path / "rot.mp4", seconds=1.0, size=(160, 256), rotation=90
    )  # displayed portrait
    got, opened = _compare(rotated.path, sample_fps=2)
    assert got[0].image.shape[:2] == (256, 160)
    assert opened == []  # decoded by PyAV, which applies the display matrix


def test_a_window_of_a_video_uses_the_configured_decoder(clip_3s, tiny_checkpoint, monkeypatch):
    calls: list[tuple] = []
    real = torchcodec.torchcodec_frames

    def spy(path, **kw):
        calls.append((kw["start"], kw["end"]))
        return real(path, device="cpu", factory=_FakeVideoDecoder, **kw)

    monkeypatch.setattr("agr_batch.pipeline.frames.torchcodec_frames", spy)
    config = ProcessingConfig(model=tiny_checkpoint, sample_fps=2.0)
    item = WorkItem(MediaFile(clip_3s.path, "video"), start=1.0, end=2.0, overlap_s=0.5, count=3)
    opened = open_frames(item, config, "torchcodec")
    times = [f.time_s for f in opened.frames]
    assert calls == [(0.5, 2.5)]
    assert times == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert opened.duration_s == pytest.approx(3.0, abs=0.05) and opened.expected_frames == 4


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 4096)
    with pytest.raises(SourceError) as info:
        list(torchcodec_frames(bad, sample_fps=2, device="cpu", factory=_FakeVideoDecoder))
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)
