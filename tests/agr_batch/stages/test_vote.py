from __future__ import annotations

import numpy as np
import pytest

from agr_batch.records import Predictions
from agr_batch.stages.vote import TrackVoter, VoteConfig, face_quality


def _chip(rng: np.random.Generator, sharp: bool) -> np.ndarray:
    if sharp:
        return rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return np.full((64, 64, 3), 128, np.uint8)


def test_quality_prefers_sharp_large_confident_faces():
    rng = np.random.default_rng(0)
    big = np.array([0, 0, 100, 100], np.float32)
    small = np.array([0, 0, 20, 20], np.float32)
    sharp, flat = _chip(rng, True), _chip(rng, False)
    assert face_quality(sharp, big, 0.9, 64) > face_quality(sharp, small, 0.9, 64)
    assert face_quality(sharp, big, 0.9, 64) > face_quality(flat, big, 0.9, 64)
    assert face_quality(sharp, big, 0.9, 64) > face_quality(sharp, big, 0.5, 64)
    assert 0.0 <= face_quality(sharp, big, 1.0, 64) < 1.0


class _NoisyOracle:
    """A classifier that is right with probability ``p`` per face, using a label in the chip."""

    def __init__(self, p: float, seed: int) -> None:
        self.p = p
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def __call__(self, chips: np.ndarray) -> Predictions:
        self.calls += 1
        n = len(chips)
        out = {}
        for head, k in (("age", 9), ("gender", 2), ("race", 7)):
            truth = chips[:, 0, 0, 0].astype(int) % k
            wrong = (truth + self.rng.integers(1, k, n)) % k
            pred = np.where(self.rng.random(n) < self.p, truth, wrong)
            probs = np.full((n, k), 0.3 / (k - 1), np.float32)
            probs[np.arange(n), pred] = 0.7
            out[head] = probs
        return Predictions(**out)


def _simulate(per_face: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    oracle = _NoisyOracle(p=0.6, seed=seed)
    voter = TrackVoter(
        oracle,
        batch_size=32,
        config=VoteConfig(best_k=5, refresh_every=4, per_face=per_face),
        chip_side=64,
    )
    truths = {}
    for track in range(200):
        truth = int(rng.integers(0, 126))
        truths[track] = truth
        for f in range(int(rng.integers(5, 30))):
            chip = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            chip[0, 0, 0] = truth
            voter.add_face(
                source="v.mp4",
                kind="video",
                start_time=None,
                track_id=track,
                frame_index=f,
                time_s=f * 0.5,
                box=np.array([0, 0, 80, 80], np.float32),
                score=0.9,
                chip=chip,
            )
    finished = voter.finish_all()
    return finished, truths, voter


def test_voting_beats_per_frame_accuracy_with_fewer_classifier_calls():
    per_face, truths, baseline = _simulate(per_face=True)
    voted, _, voter = _simulate(per_face=False)
    assert len(per_face) == len(voted) == 200
    frame_acc = np.mean(
        [(t.face_predictions.age.argmax(1) == truths[t.track_id] % 9).mean() for t in per_face]
    )
    vote_acc = np.mean([t.vote.age[0].argmax() == truths[t.track_id] % 9 for t in voted])
    assert 0.5 < frame_acc < 0.7  # the oracle's per-face accuracy
    assert vote_acc > frame_acc + 0.1
    assert voter.classified_faces < baseline.classified_faces / 1.5
    assert voter.total_faces == baseline.total_faces


def test_every_face_of_a_voted_track_carries_the_vote():
    voted, _, _ = _simulate(per_face=False, seed=3)
    for t in voted:
        assert t.classified.sum() >= 1
        np.testing.assert_allclose(t.face_predictions.race, np.repeat(t.vote.race, len(t), axis=0))


def test_per_face_mode_keeps_each_prediction():
    faces, _, _ = _simulate(per_face=True, seed=4)
    for t in faces:
        assert t.classified.all()
        np.testing.assert_allclose(t.vote.gender[0], t.face_predictions.gender.mean(0), rtol=1e-5)


def test_single_face_track_is_classified_once():
    calls = _NoisyOracle(1.0, 0)
    voter = TrackVoter(calls, batch_size=8, config=VoteConfig(), chip_side=64)
    chip = np.zeros((64, 64, 3), np.uint8)
    voter.add_face(
        source="a.jpg",
        kind="image",
        start_time=None,
        track_id=0,
        frame_index=0,
        time_s=0.0,
        box=np.array([0, 0, 50, 50], np.float32),
        score=0.8,
        chip=chip,
    )
    assert voter.pop_finished() == []
    voter.end_track("a.jpg", 0)
    assert voter.pop_finished() == []  # queued, not yet classified
    voter.flush()
    (track,) = voter.pop_finished()
    assert len(track) == 1 and track.classified.tolist() == [True]
    assert voter.classified_faces == 1


def test_config_validation():
    with pytest.raises(ValueError, match="--best-k"):
        VoteConfig(best_k=0)
