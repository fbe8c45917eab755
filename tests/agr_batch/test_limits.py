"""Every numeric option refuses NaN, infinities and absurd values with one line and exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from agr_batch.cli import main
from agr_batch.samples import photos_dir

FLOAT_OPTIONS = ["--sample-fps", "--window", "--det-threshold", "--max-gap", "--segment"]


def _run(tmp_path, model, *args: str):
    out = tmp_path / "o.parquet"
    img = str(photos_dir() / "t1.jpg")
    return CliRunner().invoke(
        main, ["run", img, "--out", str(out), "--model", str(model), "--quiet", *args]
    )


@pytest.mark.parametrize("option", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308"])
def test_run_refuses_non_finite_and_huge_floats(tmp_path, tiny_checkpoint, option, value):
    result = _run(tmp_path, tiny_checkpoint, option, value)
    assert result.exit_code == 2, (option, value, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], lines
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--window", "1e-300"),  # window indices would overflow int64
        ("--window", "0"),
        ("--sample-fps", "-1"),
        ("--max-gap", "0"),
        ("--det-size", "100000"),  # would allocate tens of GB per frame
        ("--det-size", "10"),
        ("--min-face", "0"),
        ("--batch-size", "1000000"),
        ("--best-k", "0"),
        ("--refresh-every", "0"),
        ("--min-cell-count", "-1"),
        ("--det-threshold", "1"),
    ],
)
def test_run_refuses_out_of_range_values(tmp_path, tiny_checkpoint, option, value):
    result = _run(tmp_path, tiny_checkpoint, option, value)
    assert result.exit_code == 2, (option, value, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], lines


@pytest.mark.parametrize("option", [*FLOAT_OPTIONS, "--settle"])
def test_scan_refuses_nan(tmp_path, tiny_checkpoint, option):
    root = tmp_path / "root"
    root.mkdir()
    result = CliRunner().invoke(
        main,
        ["scan", str(root), "--out", str(tmp_path / "ds"), "--model", str(tiny_checkpoint),
         option, "nan"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert option in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


def test_sane_values_still_run(tmp_path, tiny_checkpoint):
    result = _run(
        tmp_path, tiny_checkpoint, "--window", "0.001", "--det-size", "4096", "--max-gap", "1e6"
    )
    assert result.exit_code == 0, result.output
