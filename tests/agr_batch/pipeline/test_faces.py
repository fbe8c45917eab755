"""The face step on real frames, one at a time or in batches; chips on the host or device."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from agr_batch.checkpoint import load_checkpoint
from agr_batch.config import TrackerConfig, VoteConfig
from agr_batch.pipeline.budget import ByteBudget
from agr_batch.pipeline.faces import FaceBatch, FaceStep
from agr_batch.pipeline.stream import DONE, FrameOf, face_worker
from agr_batch.samples import write_scene_video
from agr_batch.stages.classify import Classifier
from agr_batch.stages.decode.media import frames
from agr_batch.stages.detect import create_detector
from agr_batch.stages.detect.regions import RegionPolicy
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor
from agr_batch.stages.vote import TrackVoter, face_quality

SPEC = PreprocessSpec(input_size=(64, 64))


@pytest.fixture(scope="module")
def scene_frames(scene_video):
    return list(frames(scene_video.path, sample_fps=2))[:4]


def test_a_batch_of_frames_gives_what_frame_by_frame_gives(centerface, scene_frames):
    one = FaceStep(centerface, SPEC, TrackerConfig())
    batched = FaceStep(centerface, SPEC, TrackerConfig())
    singles = [one.step(f) for f in scene_frames]
    together = batched.step_batch(scene_frames)
    assert len(together) == len(singles) == 4
    for a, b in zip(singles, together, strict=True):
        assert (a.frame_index, a.time_s) == (b.frame_index, b.time_s)
        np.testing.assert_allclose(a.detections.boxes, b.detections.boxes, atol=1e-3)
        assert a.track_ids.tolist() == b.track_ids.tolist()
        assert sorted(a.track_ids.tolist()) == list(range(6))  # the same six people
        assert a.chips.shape == (6, 64, 64, 3) and a.chips.dtype == np.uint8
        assert np.abs(a.chips.astype(int) - b.chips.astype(int)).max() <= 1
    assert one.end_source() == batched.end_source() == tuple(range(6))
    one.start_source()
    assert sorted(one.step(scene_frames[0]).track_ids.tolist()) == list(range(6))  # ids anew


def test_a_face_batch_checks_its_lengths(centerface, scene_frames):
    batch = FaceStep(centerface, SPEC, TrackerConfig()).step(scene_frames[0])
    with pytest.raises(ValueError, match="6 detections, 5 chips"):
        FaceBatch(batch.source, 0, 0.0, None, batch.detections, batch.chips[:5],
                  batch.track_ids)  # fmt: skip


def test_device_chips_classify_and_vote_like_host_chips(tiny_checkpoint, centerface, scene_frames):
    ckpt = load_checkpoint(tiny_checkpoint)
    spec = ckpt.meta.preprocess
    classifier = Classifier(ckpt, batch_size=4)
    batch = FaceStep(centerface, spec, TrackerConfig()).step(scene_frames[0])
    host = batch.chips
    # What an alignment on the device hands on: the normalised NCHW classifier input.
    device = chips_to_tensor(host, spec)
    a, b = classifier.predict(host), classifier.predict(device)
    np.testing.assert_allclose(a.age, b.age, atol=1e-6)
    np.testing.assert_allclose(a.race, b.race, atol=1e-6)

    def vote(chips, quality):
        voter = TrackVoter(classifier.predict, batch_size=4, config=VoteConfig(best_k=2),
                           chip_side=64)  # fmt: skip
        for i in range(len(batch)):
            voter.add_face(
                source="s", kind="video", start_time=None, track_id=i % 2, frame_index=i,
                time_s=0.0, box=batch.detections.boxes[i], score=0.9, chip=chips[i],
                quality=None if quality is None else quality[i],
            )  # fmt: skip
        return voter.finish_all()

    quality = [face_quality(c, box, 0.9, 64) for c, box in zip(host, batch.detections.boxes,
                                                                strict=True)]  # fmt: skip
    on_host, on_device = vote(host, None), vote(device, quality)
    assert [len(t) for t in on_host] == [len(t) for t in on_device] == [3, 3]
    for h, d in zip(on_host, on_device, strict=True):
        assert h.classified.tolist() == d.classified.tolist()
        np.testing.assert_allclose(h.vote.gender, d.vote.gender, atol=1e-6)
    with pytest.raises(ValueError, match="normalised floating tensor"):
        classifier.predict(device.to(dtype=__import__("torch").uint8))


# --- whole-frame searches ahead of the tiles ----------------------------------------------


class _Recording:
    """A detector that records on which threads it ran, and fails where told to."""

    def __init__(self, detector, *, fail_at: float | None = None):  # type: ignore[no-untyped-def]
        self.detector = detector
        self.threads: list[str] = []
        self.fail_at = fail_at

    def detect(self, images):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread().name)
        return self.detector.detect(images)

    def detect_around(self, image, boxes, **kw):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread().name)
        if self.fail_at is not None and len(self.threads) > self.fail_at:
            raise RuntimeError("inference failed")
        return self.detector.detect_around(image, boxes, **kw)


@pytest.fixture(scope="module")
def visit_frames(tmp_path_factory):
    # People in view from 1.2 s to 3.7 s of a 5 s video: arrivals, tiles, departures.
    video = write_scene_video(
        tmp_path_factory.mktemp("visit") / "visit.mp4", seconds=5.0, size=(960, 540),
        sway_px=60, visits=[(1.2, 3.7)],
    )  # fmt: skip
    return list(frames(video.path, sample_fps=2))


def test_searches_ahead_give_what_frame_by_frame_gives(centerface, visit_frames):
    regions = RegionPolicy(redetect_s=1.0)
    alone = FaceStep(centerface, SPEC, TrackerConfig(), regions=regions)
    ahead = _Recording(create_detector("centerface", threads=2))
    step = FaceStep(centerface, SPEC, TrackerConfig(), regions=regions, lookahead=ahead)
    assert (alone.batch_size, step.batch_size) == (1, 4)
    want = [alone.step(f) for f in visit_frames]
    got = []
    try:
        for start in range(0, len(visit_frames), 3):  # batches that split the schedule
            got += step.step_batch(visit_frames[start : start + 3])
    finally:
        step.close()
    assert [len(b) for b in got] == [len(b) for b in want]
    assert sum(len(b) for b in got) > 0
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a.detections.boxes, b.detections.boxes)
        np.testing.assert_array_equal(a.detections.landmarks, b.detections.landmarks)
        assert a.track_ids.tolist() == b.track_ids.tolist() and a.ended == b.ended
        np.testing.assert_array_equal(a.chips, b.chips)
    # Whole searches at 0, 1, 2, 3 and 4 s, every one on the helper thread.
    assert (step.whole_frames, step.tiled_frames) == (alone.whole_frames, alone.tiled_frames)
    assert step.whole_frames == 5 and len(ahead.threads) == 5
    assert all(name.startswith("agr-whole") for name in ahead.threads)
    assert alone.end_source() == step.end_source()


def test_a_failed_search_keeps_the_frames_done_before_it(centerface, visit_frames):
    failing = _Recording(centerface, fail_at=1)  # the second tile search fails
    step = FaceStep(
        failing, SPEC, TrackerConfig(), regions=RegionPolicy(redetect_s=1.0),
        lookahead=create_detector("centerface", threads=2),
    )  # fmt: skip
    batch = visit_frames[4:8]  # 2.0 s (whole), 2.5 s (tiles), 3.0 s (whole), 3.5 s (tiles)
    inp: queue.Queue = queue.Queue()
    out: queue.Queue = queue.Queue()
    for f in batch:
        inp.put(FrameOf(0, f))
    inp.put(DONE)
    try:
        face_worker(step, inp, out, threading.Event(), ByteBudget(1 << 30))
    finally:
        step.close()
    records = []
    while not out.empty():
        records.append(out.get())
    assert records[-1] is DONE
    kinds = [type(r).__name__ for r in records[:-1]]
    assert kinds == ["FacesOf", "FacesOf", "FacesOf", "FrameFailed"]
    assert [len(r.batch) for r in records[:3]] == [6, 6, 6]
    assert "face detection failed at 3.50 s (inference failed)" in records[3].error
