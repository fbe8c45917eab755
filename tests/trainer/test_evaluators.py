from __future__ import annotations

import math

import pytest
import torch

from agr_batch.labels import AGE
from agr_batch.models import HeadLogits
from trainer.evaluators import (
    AccuracyEvaluator,
    CalibrationEvaluator,
    ConfusionEvaluator,
    GroupAccuracyEvaluator,
    full_evaluator,
    nan_to_none,
)


def _logits(k: int, rows: list[tuple[int, float]]) -> torch.Tensor:
    """Logits whose softmax puts probability p on class c and spreads the rest evenly."""
    probs = torch.full((len(rows), k), 0.0, dtype=torch.float64)
    for i, (c, p) in enumerate(rows):
        probs[i] = (1 - p) / (k - 1)
        probs[i, c] = p
    return probs.log()


# Four faces: targets (age, gender, race) and each head's (predicted class, confidence).
TARGETS = torch.tensor([[3, 0, 0], [0, 1, 1], [3, 1, 5], [8, 0, 0]])
AGE_PRED = [(3, 0.50), (1, 0.42), (4, 0.30), (8, 0.95)]  # right, wrong, wrong, right
GENDER_PRED = [(0, 0.91), (0, 0.62), (1, 0.65), (0, 0.88)]  # right, wrong, right, right
RACE_PRED = [(0, 0.81), (1, 0.70), (2, 0.35), (0, 0.55)]  # right, right, wrong, right


def _batches() -> list[tuple[HeadLogits, torch.Tensor]]:
    logits = HeadLogits(_logits(9, AGE_PRED), _logits(2, GENDER_PRED), _logits(7, RACE_PRED))
    return [(HeadLogits(*(t[s] for t in logits)), TARGETS[s]) for s in (slice(0, 2), slice(2, 4))]


def _run(evaluator):
    evaluator.reset()
    for logits, targets in _batches():
        evaluator.process(logits, targets)
    return evaluator.evaluate()


def test_accuracy():
    result = _run(AccuracyEvaluator())
    assert result["accuracy"] == {"age": 0.5, "gender": 0.75, "race": 0.75}
    assert result["mean_accuracy"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert result["n"] == 4


def test_confusion():
    c = _run(ConfusionEvaluator())["confusion"]
    assert c["gender"]["labels"] == ["Male", "Female"]
    assert c["gender"]["matrix"] == [[2, 0], [1, 1]]
    age = torch.tensor(c["age"]["matrix"])
    assert age.sum() == 4
    assert age[3, 3] == 1 and age[0, 1] == 1 and age[3, 4] == 1 and age[8, 8] == 1
    race = torch.tensor(c["race"]["matrix"])
    assert race[0, 0] == 2 and race[1, 1] == 1 and race[5, 2] == 1 and race.sum() == 4


def test_expected_calibration_error():
    result = _run(CalibrationEvaluator())
    # Gender: bin (13/15, 14/15] holds 0.91 and 0.88, both right: |1 - 0.895| * 2/4;
    # bin (9/15, 10/15] holds 0.62 (wrong) and 0.65 (right): |0.5 - 0.635| * 2/4.
    assert result["ece"]["gender"] == pytest.approx(0.105 * 0.5 + 0.135 * 0.5)
    # Age and race: every face in its own bin, so ECE is the mean |correct - confidence|.
    assert result["ece"]["age"] == pytest.approx((0.50 + 0.42 + 0.30 + 0.05) / 4)
    assert result["ece"]["race"] == pytest.approx((0.19 + 0.30 + 0.35 + 0.45) / 4)
    bins = result["reliability"]["gender"]
    assert len(bins) == 15
    assert bins[13]["n"] == 2 and bins[13]["accuracy"] == 1.0
    assert bins[13]["confidence"] == pytest.approx(0.895)
    assert bins[9]["n"] == 2 and bins[9]["accuracy"] == 0.5
    assert sum(b["n"] for b in bins) == 4
    assert math.isnan(bins[0]["accuracy"])


def test_ece_bin_edges_are_right_closed():
    ev = CalibrationEvaluator(bins=2)
    # Confidence exactly 0.5 belongs to (0, 0.5], 0.75 to (0.5, 1].
    logits = HeadLogits(_logits(9, [(0, 0.5)]), _logits(2, [(0, 0.5)]), _logits(7, [(0, 0.75)]))
    ev.process(logits, torch.tensor([[0, 0, 0]]))
    rel = ev.evaluate()["reliability"]
    assert [b["n"] for b in rel["gender"]] == [1, 0]
    assert [b["n"] for b in rel["race"]] == [0, 1]


def test_per_group_accuracy_and_gap():
    groups = _run(GroupAccuracyEvaluator())["per_group"]
    rg = groups["race_gender"]["groups"]
    assert rg["White / Male"] == {"n": 2, "accuracy": {"age": 1.0, "gender": 1.0, "race": 1.0}}
    assert rg["Black / Female"] == {"n": 1, "accuracy": {"age": 0.0, "gender": 0.0, "race": 1.0}}
    assert rg["Indian / Female"] == {"n": 1, "accuracy": {"age": 0.0, "gender": 1.0, "race": 0.0}}
    assert rg["Indian / Male"]["n"] == 0 and math.isnan(rg["Indian / Male"]["accuracy"]["age"])
    assert len(rg) == 14
    gap = groups["race_gender"]["worst_group_gap"]["gender"]
    assert gap["gap"] == 1.0 and gap["worst"] == "Black / Female"

    age = groups["age"]["groups"]
    assert list(age) == list(AGE)
    assert age["20-29"] == {"n": 2, "accuracy": {"age": 0.5, "gender": 1.0, "race": 0.5}}
    assert age["0-2"]["accuracy"] == {"age": 0.0, "gender": 0.0, "race": 1.0}
    assert age["more than 70"]["accuracy"] == {"age": 1.0, "gender": 1.0, "race": 1.0}
    race_gap = groups["age"]["worst_group_gap"]["race"]
    assert race_gap["gap"] == 0.5
    assert race_gap["worst"] == "20-29" and race_gap["best"] in {"0-2", "more than 70"}
    assert groups["age"]["worst_group_gap"]["age"]["worst"] == "0-2"


def test_reset_and_merged_results():
    ev = full_evaluator()
    ev.process(*_batches()[0])
    result = _run(ev)  # resets first, so the extra batch is forgotten
    assert {"accuracy", "confusion", "per_group", "ece", "reliability"} <= set(result)
    assert result["n"] == 4
    assert nan_to_none({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}
