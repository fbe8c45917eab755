"""The NVDEC decoder's timing, sampling and orientation equal PyAV's.

PyNvVideoCodec needs an NVIDIA GPU, so on the CPU a stand-in decoder plays its part: it
yields PyAV's frames with their PTS and DLPack pixels, exactly what the library's frames
offer; everything else (timing, sampling, rotation, the Frame records) is the product's code.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from agr_batch.stages.decode.media import SourceError, frames
from agr_batch.stages.decode.nvdec import nvdec_available, nvdec_frames
from tests import media
from tests.conftest import CUDA_TESTS_DEVICE


class _FakeFrame:
    """A decoded frame as PyNvVideoCodec hands it out: PTS plus DLPack RGB pixels."""

    def __init__(self, pts: int | None, rgb: np.ndarray) -> None:
        self._pts = pts
        self._tensor = torch.from_numpy(rgb)

    def getPTS(self) -> int | None:  # noqa: N802 (the library's name)
        return self._pts

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def _fake_nvdec(path: Path, gpu_id: int):
    # NVDEC returns coded pictures: the display rotation is left to the caller.
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            yield _FakeFrame(frame.pts, frame.to_ndarray(format="rgb24"))


def _compare(path: Path, **kw):
    want = list(frames(path, **kw))
    got = list(nvdec_frames(path, device="cpu", factory=_fake_nvdec, **kw))
    assert [f.frame_index for f in got] == [f.frame_index for f in want]
    assert [f.time_s for f in got] == pytest.approx([f.time_s for f in want], abs=1e-9)
    assert {f.start_time for f in got} == {f.start_time for f in want}
    for g, w in zip(got, want, strict=True):
        assert g.on_device and tuple(g.image.shape) == w.image.shape
        assert np.array_equal(g.image.numpy(), w.image)
    return got


def test_sampling_timing_and_start_time_equal_pyav(clip_3s):
    got = _compare(clip_3s.path, sample_fps=2)
    assert [media.read_frame_number(f.image.numpy()) for f in got] == [0, 15, 30, 45, 60, 75]
    assert got[0].start_time.isoformat() == "2024-05-06T07:08:09+00:00"
    _compare(clip_3s.path, sample_fps=0)
    _compare(clip_3s.path, sample_fps=5, start=1.0, end=2.0)


def test_variable_frame_rate_and_mtime_start(tmp_path):
    written = media.make_video(tmp_path / "vfr.mp4", seconds=1.0, size=(256, 160), vfr=True)
    _compare(written.path, sample_fps=0)
    _compare(written.path, sample_fps=7)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied_on_the_device(tmp_path, rotation):
    written = media.make_video(
        tmp_path / f"rot{rotation}.mp4", seconds=0.5, size=(320, 240), rotation=rotation
    )
    got = _compare(written.path, sample_fps=0)
    assert tuple(got[0].image.shape[:2]) == (written.size[1], written.size[0])
    assert media.read_frame_number(got[0].image.numpy()) == 0


def test_library_errors_become_one_source_error_line(clip_3s):
    def broken(path, gpu_id):
        yield from ()
        raise RuntimeError("CUDA_ERROR_NO_DEVICE:\nno CUDA-capable device is detected")

    with pytest.raises(SourceError) as info:
        list(nvdec_frames(clip_3s.path, device="cpu", factory=broken))
    assert "NVDEC decoding failed (CUDA_ERROR_NO_DEVICE: no CUDA" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match="not a media file"):
        list(nvdec_frames(media.make_text_as(clip_3s.path.parent / "x.mp4"), factory=broken))


@pytest.mark.cuda
def test_real_nvdec_equals_pyav_on_the_gpu(clip_3s):
    if not nvdec_available():
        pytest.skip("PyNvVideoCodec is not installed on this GPU machine")
    want = list(frames(clip_3s.path, sample_fps=2))
    got = list(nvdec_frames(clip_3s.path, sample_fps=2, device=CUDA_TESTS_DEVICE))
    assert [f.frame_index for f in got] == [f.frame_index for f in want]
    assert [f.time_s for f in got] == pytest.approx([f.time_s for f in want], abs=1e-6)
    for g, w in zip(got, want, strict=True):
        # NVDEC's and FFmpeg's YUV to RGB conversions differ by about one level.
        assert np.abs(g.image.cpu().numpy().astype(int) - w.image).mean() < 2.0
