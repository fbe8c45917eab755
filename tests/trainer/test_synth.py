from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agr_batch.labels import AGE, GENDER, RACE
from trainer.cli import main
from trainer.synth import (
    FAIRFACE_TRAIN_COUNTS,
    MARKER,
    FaceLabels,
    draw_face,
    is_synthetic,
    make_dataset,
    sample_labels,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_exact_fairface_layout(tmp_path):
    summary = make_dataset(tmp_path, 50, seed=3, size=224)
    assert (summary.n_train, summary.n_val) == (40, 10)
    for split, n in (("train", 40), ("val", 10)):
        lines = (tmp_path / f"fairface_label_{split}.csv").read_text().splitlines()
        assert lines[0] == "file,age,gender,race,service_test"
        rows = list(csv.DictReader(lines))
        assert [r["file"] for r in rows] == [f"{split}/{i}.jpg" for i in range(1, n + 1)]
        for r in rows:
            assert r["age"] in AGE and r["gender"] in GENDER and r["race"] in RACE
            assert r["service_test"] in {"True", "False"}
        files = sorted(p.name for p in (tmp_path / split).iterdir())
        assert files == sorted(f"{i}.jpg" for i in range(1, n + 1))
        with Image.open(tmp_path / split / "1.jpg") as im:
            assert im.format == "JPEG"
            assert im.size == (224, 224)
            assert im.mode == "RGB"


def test_deterministic_for_a_seed(tmp_path):
    a = make_dataset(tmp_path / "a", 12, seed=7, size=64).root
    b = make_dataset(tmp_path / "b", 12, seed=7, size=64).root
    c = make_dataset(tmp_path / "c", 12, seed=8, size=64).root
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 12 + 3  # images, two CSV files and the synthetic marker
    assert _digest(a) != _digest(c)


def test_fairface_like_imbalance():
    labels = sample_labels(20000, seed=0)
    ages = Counter(lab.age for lab in labels)
    total = sum(FAIRFACE_TRAIN_COUNTS["age"].values())
    for name, count in FAIRFACE_TRAIN_COUNTS["age"].items():
        assert ages[name] / 20000 == pytest.approx(count / total, abs=0.01)
    assert ages.most_common(1)[0][0] == "20-29"
    assert min(ages, key=ages.__getitem__) == "more than 70"
    genders = Counter(lab.gender for lab in labels)
    assert 0.5 < genders["Male"] / 20000 < 0.56


def test_each_label_changes_its_own_features():
    base = FaceLabels("20-29", "Male", "White")

    def draw(labels: FaceLabels) -> np.ndarray:
        return draw_face(labels, rng=np.random.default_rng(11), size=128).astype(int)

    ref = draw(base)
    assert np.array_equal(ref, draw(base))
    cheek = (slice(78, 84), slice(40, 46))  # skin below the left eye
    corner = (slice(0, 6), slice(0, 6))  # background
    other_race = draw(FaceLabels("20-29", "Male", "Black"))
    other_gender = draw(FaceLabels("20-29", "Female", "White"))
    other_age = draw(FaceLabels("more than 70", "Male", "White"))
    # Race recolours the skin; gender and age leave the cheek's colour alone.
    assert np.abs(other_race[cheek] - ref[cheek]).mean() > 60
    assert np.abs(other_gender[cheek] - ref[cheek]).mean() < 3
    # Nothing touches the background for the same nuisance draw.
    for img in (other_race, other_gender, other_age):
        assert np.array_equal(img[corner], ref[corner])
    # Long hair beside the face (gender), grey hair and wrinkles (age) change many pixels.
    assert (np.abs(other_gender - ref).sum(2) > 60).mean() > 0.05
    assert (np.abs(other_age - ref).sum(2) > 60).mean() > 0.02


def test_synth_cli(tmp_path):
    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["synth", "--out", str(out), "--n", "10", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert len(list((out / "train").glob("*.jpg"))) == 8
    assert len(list((out / "val").glob("*.jpg"))) == 2
    help_text = CliRunner().invoke(main, ["synth", "--help"]).stdout
    assert "TEST DATA ONLY" in help_text


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be at least 2"):
        make_dataset(tmp_path, 1)
    with pytest.raises(ValueError, match="size must be at least 32"):
        make_dataset(tmp_path, 10, size=16)


def test_marked_synthetic_and_progress_has_total_and_eta(tmp_path, capsys):
    from agr_batch.checkpoint import SYNTH_MARKER

    make_dataset(tmp_path / "d", 20, seed=1, size=64, progress=True)
    err = capsys.readouterr().err
    # tqdm's line: "synth: 100%|...| 20/20 [00:01<00:00, 15.2img/s]": total, share, ETA.
    assert "20/20" in err and "100%" in err and "<00:00" in err and "img/s" in err
    assert MARKER == SYNTH_MARKER and is_synthetic(tmp_path / "d")
    assert not is_synthetic(tmp_path)
