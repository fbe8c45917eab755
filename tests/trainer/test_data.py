from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor, resize_chip
from trainer.augment import AugmentConfig, augment_chip
from trainer.cli import main
from trainer.data import (
    DataError,
    EpochSampler,
    FaceDataset,
    load_image,
    make_loader,
    prepare_epoch,
    read_split,
)
from trainer.fit import FitConfig, fit

BAD_ROW = 3  # spreadsheet numbering: header is row 1


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _set_label(root: Path, split: str, row: int, column: str, value: str) -> None:
    path = root / f"fairface_label_{split}.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row - 1].split(",")
    cells[header.index(column)] = value
    lines[row - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_read_split(small_data):
    split = read_split(small_data.root, "train")
    assert len(split) == small_data.n_train
    assert split.samples[0].file == "train/1.jpg"
    assert split.samples[0].row == 2
    assert sum(split.class_counts("age")) == small_data.n_train
    assert len(read_split(small_data.root, "train", limit=5)) == 5


def test_unknown_label_names_csv_and_row(small_data, tmp_path):
    root = _copy(small_data.root, tmp_path / "d")
    _set_label(root, "train", BAD_ROW, "race", "Martian")
    with pytest.raises(DataError) as e:
        read_split(root, "train")
    message = str(e.value)
    assert "fairface_label_train.csv" in message
    assert f"row {BAD_ROW}" in message
    assert "'Martian'" in message


def test_fit_cli_fails_up_front_on_unknown_label(small_data, tmp_path):
    root = _copy(small_data.root, tmp_path / "d")
    _set_label(root, "val", 5, "age", "adult")
    out = tmp_path / "run"
    args = ["fit", "--data", str(root), "--arch", "tiny", "--out", str(out), "--epochs", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "fairface_label_val.csv, row 5" in lines[0]
    assert "'adult'" in lines[0]
    assert not (out / "last.pt").exists()


def test_missing_columns_and_files(tmp_path):
    with pytest.raises(DataError, match="no such label file"):
        read_split(tmp_path, "train")
    (tmp_path / "fairface_label_train.csv").write_text("file,age,gender\ntrain/1.jpg,0-2,Male\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['race'\]"):
        read_split(tmp_path, "train")
    (tmp_path / "fairface_label_train.csv").write_text("file,age,gender,race\n")
    with pytest.raises(DataError, match="no rows"):
        read_split(tmp_path, "train")


def _corrupt(root: Path) -> dict[str, str]:
    """Break three images; return file → expected reason fragment."""
    truncated = root / "train" / "3.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    (root / "train" / "5.jpg").unlink()
    (root / "val" / "2.jpg").write_bytes(b"this is not a jpeg")
    return {"train/3.jpg": "unreadable", "train/5.jpg": "missing", "val/2.jpg": "unreadable"}


def test_corrupt_images_are_skipped_and_reported(small_data, tmp_path):
    root = _copy(small_data.root, tmp_path / "d")
    broken = _corrupt(root)
    result = fit(
        FitConfig(data=root, arch="tiny", out=tmp_path / "run", epochs=2, workers=0, progress=False)
    )
    assert {s.file: s.reason for s in result.skipped}.keys() == broken.keys()
    for s in result.skipped:
        assert broken[s.file] in s.reason
    assert result.best_checkpoint.exists()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(","), strict=True))
    assert int(first["train_images"]) == small_data.n_train - 2
    assert int(first["val_images"]) == small_data.n_val - 1
    assert int(first["skipped"]) == 3


def test_fit_cli_lists_skipped_images(small_data, tmp_path):
    root = _copy(small_data.root, tmp_path / "d")
    _corrupt(root)
    out = tmp_path / "run"
    args = ["fit", "--data", str(root), "--arch", "tiny", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out / "best.pt")
    assert "skipped 3 unreadable image(s)" in result.stderr
    for name in ("train/3.jpg", "train/5.jpg", "val/2.jpg"):
        assert name in result.stderr


def test_training_input_is_the_processors_preprocessing(small_data):
    """Without augmentation, a batch is exactly chips_to_tensor of the decoded images."""
    spec = PreprocessSpec(input_size=(48, 48))
    split = read_split(small_data.root, "val", limit=6)
    loader, _ = make_loader(FaceDataset(split, spec), batch_size=6, shuffle=False)
    batch = next(iter(loader))
    chips = [resize_chip(load_image(s.path), spec) for s in split.samples]
    assert torch.equal(batch.images, chips_to_tensor(chips, spec))
    assert batch.images.shape == (6, 3, 48, 48)
    assert batch.targets.tolist() == [list(s.targets) for s in split.samples]


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(50, shuffle=True, seed=1), EpochSampler(50, shuffle=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert a.order() == b.order()
    assert sorted(a.order()) == list(range(50))
    b.set_epoch(4)
    assert a.order() != b.order()
    assert EpochSampler(5, shuffle=False).order() == [0, 1, 2, 3, 4]


def test_augmentation_is_reproducible_and_worker_independent(small_data):
    spec = PreprocessSpec(input_size=(64, 64))
    split = read_split(small_data.root, "train", limit=16)
    ds = FaceDataset(split, spec, augment=AugmentConfig(), seed=3)
    batches = []
    for workers in (0, 2):
        loader, _ = make_loader(ds, batch_size=8, shuffle=True, seed=3, workers=workers)
        prepare_epoch(loader, 2)
        batches.append([b.images for b in loader])
    for x, y in zip(*batches, strict=True):
        assert torch.equal(x, y)
    loader, _ = make_loader(ds, batch_size=8, shuffle=True, seed=3)
    prepare_epoch(loader, 3)
    assert not torch.equal(next(iter(loader)).images, batches[0][0])


def test_augment_chip():
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    out = augment_chip(chip, np.random.default_rng(1), AugmentConfig())
    assert out.dtype == np.uint8 and out.shape == chip.shape
    assert np.array_equal(out, augment_chip(chip, np.random.default_rng(1), AugmentConfig()))
    assert not np.array_equal(out, chip)
    same = augment_chip(chip, np.random.default_rng(1), AugmentConfig.none())
    assert np.array_equal(same, chip)
    flip_only = AugmentConfig(hflip=1.0, scale=0, shift=0, brightness=0, contrast=0, saturation=0)
    assert np.array_equal(augment_chip(chip, rng, flip_only), chip[:, ::-1])
    with pytest.raises(ValueError, match="uint8"):
        augment_chip(chip.astype(np.float32), rng, AugmentConfig())
