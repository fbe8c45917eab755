from __future__ import annotations

import csv

from click.testing import CliRunner

from trainer.cli import main
from trainer.table1 import DEFAULT_ARCHS, PAPER_TABLE1


def test_table1_writes_both_tables_and_resumes(small_data, tmp_path):
    out = tmp_path / "t1"
    args = ["table1", "--data", str(small_data.root), "--out", str(out), "--archs", "tiny"]
    args += ["--epochs", "1", "--no-progress"]
    runner = CliRunner()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output

    with open(out / "table1.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["model", "age", "gender", "race", "params_m"]
    assert [r[0] for r in rows[1:]] == ["tiny"]
    assert 0 <= float(rows[1][2]) <= 100
    assert float(rows[1][4]) == 0.111  # tiny: 111,330 parameters

    md = (out / "table1.md").read_text()
    assert "| Model | Age % | Gender % | Race % | Params M |" in md
    assert f"| tiny | {float(rows[1][1]):.1f} |" in md
    for name, age, gender, race, params in PAPER_TABLE1:
        assert f"| {name} | {age:.1f} | {gender:.1f} | {race:.1f} | {params:.1f} |" in md
    assert "| Proposed | 56.3 | 94.6 | 58.4 | 35.3 |" in md
    assert (out / "tiny" / "best.pt").exists() and (out / "tiny" / "eval_val.json").exists()
    assert "| tiny |" in result.stdout

    # A rerun reuses the finished run instead of training again.
    mtime = (out / "tiny" / "last.pt").stat().st_mtime_ns
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert (out / "tiny" / "last.pt").stat().st_mtime_ns == mtime
    with open(out / "table1.csv", newline="") as f:
        assert list(csv.reader(f)) == rows


def test_table1_defaults_and_bad_arch(small_data, tmp_path):
    assert DEFAULT_ARCHS == ("paper", "resnet34", "densenet161", "alexnet", "mobilenet_v2")
    args = ["table1", "--data", str(small_data.root), "--out", str(tmp_path), "--archs", "tiny,vgg"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "vgg" in result.stderr
