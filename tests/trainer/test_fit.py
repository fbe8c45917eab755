from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agr_batch.checkpoint import load_checkpoint, read_payload
from agr_batch.labels import AGE
from agr_batch.stages.preprocess import PreprocessSpec
from trainer.cli import main
from trainer.data import read_split
from trainer.evaluation import evaluate_checkpoint
from trainer.fit import FitConfig, FitError, fit
from trainer.hooks import METRIC_COLUMNS, EarlyStoppingHook, EpochRecord, Hook, TrainState
from trainer.synth import MARKER

# Twice chance per head (gender: 0.75).
THRESHOLDS = {"age": 2 / 9, "race": 2 / 7, "gender": 0.75}


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_learns_every_head(tiny_run, synth_data):
    report = evaluate_checkpoint(synth_data.root, tiny_run.best_checkpoint, device="cpu")
    assert report.n == synth_data.n_val == 300
    for head, threshold in THRESHOLDS.items():
        assert report.accuracy[head] >= threshold, (head, report.accuracy)
    # Age must also beat always answering the most frequent bin (FairFace's imbalance).
    val_ages = Counter(AGE[s.age] for s in read_split(synth_data.root, "val").samples)
    assert report.accuracy["age"] > val_ages.most_common(1)[0][1] / report.n + 0.05
    # Validation during training and `eval` see the same pipeline, so they agree exactly.
    meta = load_checkpoint(tiny_run.best_checkpoint).meta
    assert meta.training["val_accuracy"] == pytest.approx(report.accuracy, abs=1e-9)


def test_run_folder(tiny_run, synth_data):
    out = tiny_run.best_checkpoint.parent
    assert tiny_run.epochs_completed == 5 and not tiny_run.stopped_early
    assert tiny_run.last_checkpoint == out / "last.pt" and tiny_run.last_checkpoint.exists()
    rows = _metrics(tiny_run.metrics_csv)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    scores = [float(r["val_mean_acc"]) for r in rows]
    assert tiny_run.best_epoch == scores.index(max(scores)) + 1
    assert tiny_run.best_score == pytest.approx(max(scores))
    ckpt = load_checkpoint(tiny_run.best_checkpoint)
    assert ckpt.meta.arch == "tiny"
    assert ckpt.meta.preprocess == PreprocessSpec(input_size=(64, 64))
    training = ckpt.meta.training
    assert training["data"] == str(synth_data.root.resolve())
    assert training["synthetic"] is True and "synth" in training["dataset"]
    assert training["epoch"] == tiny_run.best_epoch and training["epochs"] == 5
    assert training["recipe"]["optimizer"] == "Adam" and training["recipe"]["lr"] == 1e-3
    assert set(training["val_accuracy"]) == {"age", "gender", "race"}
    # last.pt holds what --resume needs; best.pt stays small.
    extra = read_payload(tiny_run.last_checkpoint)["extra"]
    assert extra["trainer"]["loop"]["epoch"] == 5
    assert {"optimizer", "rng"} <= set(extra["trainer"])
    assert "extra" not in read_payload(tiny_run.best_checkpoint)


class _InterruptAt(Hook):
    """Raises KeyboardInterrupt at one training step (a killed job)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def after_step(self, loop, stats):
        if (stats.epoch, stats.step) == self.at:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_equals_uninterrupted(synth_data, tmp_path):
    def config(out: Path, **kw) -> FitConfig:
        base = {"epochs": 3, "limit": 256, "lr": 1e-3, "batch_size": 32, "progress": False}
        return FitConfig(data=synth_data.root, arch="tiny", out=out, **{**base, **kw})

    straight = fit(config(tmp_path / "a", workers=0))

    with pytest.raises(KeyboardInterrupt):
        fit(config(tmp_path / "b", workers=0), hooks=[_InterruptAt(epoch=2, step=3)])
    assert len(_metrics(tmp_path / "b" / "metrics.csv")) == 1
    # Resume in a different loader set-up: batches must not depend on the worker count.
    resumed = fit(config(tmp_path / "b", workers=1, resume=True))

    assert resumed.epochs_completed == straight.epochs_completed == 3
    assert resumed.best_epoch == straight.best_epoch
    for name in ("last.pt", "best.pt"):
        a = read_payload(tmp_path / "a" / name)
        b = read_payload(tmp_path / "b" / name)
        for key, tensor in a["state_dict"].items():
            torch.testing.assert_close(b["state_dict"][key], tensor, rtol=1e-5, atol=1e-6)
    opt_a = read_payload(tmp_path / "a" / "last.pt")["extra"]["trainer"]["optimizer"]
    opt_b = read_payload(tmp_path / "b" / "last.pt")["extra"]["trainer"]["optimizer"]
    for k, state in opt_a["state"].items():
        torch.testing.assert_close(opt_b["state"][k]["exp_avg"], state["exp_avg"])
    rows_a, rows_b = (
        _metrics(tmp_path / "a" / "metrics.csv"),
        _metrics(tmp_path / "b" / "metrics.csv"),
    )
    assert len(rows_a) == len(rows_b) == 3
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for col in METRIC_COLUMNS:
            if col != "seconds":
                assert float(rb[col]) == pytest.approx(float(ra[col]), rel=1e-5, abs=1e-6), col


def test_resume_refuses_changed_settings_and_overwrites(small_data, tmp_path):
    out = tmp_path / "run"
    base = {"data": small_data.root, "arch": "tiny", "out": out, "epochs": 1, "progress": False}
    fit(FitConfig(**base))
    with pytest.raises(FitError, match="already holds a run"):
        fit(FitConfig(**base))
    with pytest.raises(FitError, match=r"changed settings: batch_size=64 \(now 32\)"):
        fit(FitConfig(**base, resume=True, batch_size=32))
    # Extending a finished run is allowed: it trains only the new epoch.
    more = fit(FitConfig(**{**base, "epochs": 2}, resume=True))
    assert more.epochs_completed == 2
    assert [r["epoch"] for r in _metrics(out / "metrics.csv")] == ["1", "2"]


def test_early_stopping_hook():
    class _Loop:
        state = TrainState()

    loop = _Loop()
    hook = EarlyStoppingHook(patience=2)
    for epoch, score in enumerate([0.5, 0.6, 0.6, 0.55], start=1):
        improved = loop.state.observe(epoch, score)
        record = EpochRecord(epoch, None, None, 1e-4, 0.0, improved)  # type: ignore[arg-type]
        hook.after_epoch(loop, record)  # type: ignore[arg-type]
        assert loop.state.stop == (epoch == 4)
    assert loop.state.stopped_early and loop.state.best_epoch == 2
    assert not loop.state.observe(5, float("nan"))


def test_patience_stops_a_run(small_data, tmp_path):
    # lr 0 never changes the weights much (only BatchNorm statistics move), so the mean
    # validation accuracy stalls within a few epochs and patience 1 ends the run.
    result = fit(
        FitConfig(
            data=small_data.root,
            arch="tiny",
            out=tmp_path / "run",
            epochs=20,
            lr=0.0,
            patience=1,
            class_weights=True,
            progress=False,
        )
    )
    assert result.stopped_early
    assert result.epochs_completed < 20
    assert len(_metrics(result.metrics_csv)) == result.epochs_completed


def test_cli_fit_then_eval(small_data, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["fit", "--data", str(small_data.root), "--arch", "tiny", "--out", str(out)]
    result = runner.invoke(main, [*args, "--epochs", "2", "--lr", "1e-3", "--seed", "1"])
    assert result.exit_code == 0, result.output
    best = out / "best.pt"
    assert result.stdout.splitlines()[-1] == str(best)
    assert best.exists()
    assert "epoch 2/2" in result.stderr  # logs and progress go to stderr

    report_path = tmp_path / "eval.json"
    args = [
        "eval",
        "--data",
        str(small_data.root),
        "--model",
        str(best),
        "--json",
        str(report_path),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| Model | Age % | Gender % | Race % | Params M |"
    assert lines[-1].startswith("| tiny | ")
    report = json.loads(report_path.read_text())
    assert {"accuracy", "per_group", "params", "confusion", "ece"} <= set(report)
    assert report["n"] == small_data.n_val
    assert sum(map(sum, report["confusion"]["age"]["matrix"])) == small_data.n_val
    assert f"{100 * report['accuracy']['gender']:.1f}" in lines[-1]

    result = runner.invoke(
        main, ["eval", "--data", str(small_data.root), "--model", str(out / "nope.pt")]
    )
    assert result.exit_code == 2
    assert "no such checkpoint file" in result.stderr


def test_cli_rejects_unknown_arch(small_data, tmp_path):
    args = ["fit", "--data", str(small_data.root), "--arch", "resnet35", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "resnet35" in result.stderr


def test_checkpoints_name_their_data_and_info_flags_a_synthetic_model(small_data, tmp_path):
    from agr_batch.cli import main as agr_batch

    plain = tmp_path / "faces-data"  # the same images without the synthetic marker
    shutil.copytree(small_data.root, plain)
    (plain / MARKER).unlink()
    infos = {}
    for name, data in (("synth", small_data.root), ("plain", plain)):
        args = ["fit", "--data", str(data), "--arch", "tiny", "--out", str(tmp_path / name)]
        result = CliRunner().invoke(main, [*args, "--epochs", "1"])
        assert result.exit_code == 0, result.output
        best = str(tmp_path / name / "best.pt")
        text = CliRunner().invoke(agr_batch, ["info", best])
        as_json = CliRunner().invoke(agr_batch, ["info", best, "--json"])
        assert text.exit_code == 0 and as_json.exit_code == 0, text.output
        infos[name] = (text.output, json.loads(as_json.output))
    text, data = infos["synth"]
    assert text.startswith("!" * 78) and "SYNTHETIC MODEL" in text.splitlines()[1]
    assert "MEANINGLESS" in text and data["synthetic"] is True
    assert "trained on    agr-train synth (synthetic drawn faces) (SYNTHETIC)" in text
    text, data = infos["plain"]
    assert "SYNTHETIC" not in text and data["synthetic"] is False
    assert "trained on    faces-data (FairFace layout) (not synthetic)" in text
    assert data["dataset"] == "faces-data (FairFace layout)"


def test_help_names_the_options_it_describes():
    for command in ("fit", "table1"):
        text = CliRunner().invoke(main, [command, "--help"]).output
        assert "RUNDIR" not in text and "OUT/" not in text and "ARCH on" not in text
        assert "--out folder" in text
