"""Progress has totals: the files of the batch, and each video's frames from its duration."""

from __future__ import annotations

from pathlib import Path

import pytest

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import WorkItem
from agr_batch.pipeline.local import LocalPipeline
from agr_batch.pipeline.progress import BarProgress
from agr_batch.samples import photos_dir
from agr_batch.stages.decode.media import MediaFile


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def begin(self, total):
        self.calls.append(("begin", total))

    def source_started(self, item, expected_frames):
        self.calls.append(("start", item.media.path.name, expected_frames))

    def frame(self, item):
        self.calls.append(("frame", item.media.path.name))

    def source_done(self, item):
        self.calls.append(("done", item.media.path.name))

    def close(self):
        self.calls.append(("close",))


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    with LocalPipeline(ProcessingConfig(model=tiny_checkpoint, backend="eager")) as p:
        yield p


def _items(scene_video) -> list[WorkItem]:
    return [
        WorkItem(MediaFile(Path(scene_video.path), "video")),
        WorkItem(MediaFile(photos_dir() / "t1.jpg", "image")),
    ]


def test_every_video_announces_its_frames_and_every_file_its_end(pipeline, scene_video):
    recorder = _Recorder()
    pipeline.process(_items(scene_video), lambda r: None, recorder)
    calls = recorder.calls
    assert calls[0] == ("begin", 2)
    # 6 s at 2 fps: 12 frames announced, 12 reported.
    assert ("start", "scene.mp4", 12) in calls and ("start", "t1.jpg", 1) in calls
    assert calls.count(("frame", "scene.mp4")) == 12 and calls.count(("frame", "t1.jpg")) == 1
    assert [c for c in calls if c[0] == "done"] == [("done", "scene.mp4"), ("done", "t1.jpg")]


def test_bars_show_totals(pipeline, scene_video, capsys):
    bars = BarProgress()
    pipeline.process(_items(scene_video), lambda r: None, bars)
    bars.close()
    err = capsys.readouterr().err
    # Totals from the start, so tqdm shows a percentage and an ETA.
    assert "files:   0%" in err and "| 0/2 [" in err
    assert "scene.mp4:   0%" in err and "| 0/12 [" in err
