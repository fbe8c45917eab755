"""The face step on real frames, one at a time or in batches; chips on the host or device."""

from __future__ import annotations

import numpy as np
import pytest

from agr_batch.checkpoint import load_checkpoint
from agr_batch.config import TrackerConfig, VoteConfig
from agr_batch.pipeline.faces import FaceBatch, FaceStep
from agr_batch.stages.classify import Classifier
from agr_batch.stages.decode.media import frames
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
