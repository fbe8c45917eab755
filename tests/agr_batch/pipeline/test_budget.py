"""Frames in flight are bounded by bytes, not by count."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agr_batch.config import ProcessingConfig
from agr_batch.pipeline import WorkItem
from agr_batch.pipeline.budget import ByteBudget
from agr_batch.pipeline.local import LocalPipeline
from agr_batch.samples import photos_dir
from agr_batch.stages.decode.media import discover


def test_budget_blocks_when_full_and_lets_one_large_item_through():
    budget = ByteBudget(100)
    stop = threading.Event()
    assert budget.acquire(60, stop) and budget.acquire(40, stop)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(budget.acquire(10, stop)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and budget.used == 100  # full: waits
    budget.release(60)
    t.join(5)
    assert got == [True] and budget.used == 50
    budget.release(50)
    assert budget.acquire(1000, stop) and budget.peak == 1000  # alone, larger than the budget
    waiting = threading.Thread(target=lambda: got.append(budget.acquire(1, stop)))
    waiting.start()
    stop.set()
    waiting.join(5)
    assert got[-1] is False


@pytest.mark.parametrize("frames_in_flight", [1, 2])
def test_pipeline_keeps_frame_bytes_in_flight_under_the_budget(
    tmp_path, tiny_checkpoint, frames_in_flight
):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        shutil.copy(photos_dir() / "t1.jpg", folder / f"{i}.jpg")
    frame_bytes = 1280 * 886 * 3
    config = ProcessingConfig(
        model=tiny_checkpoint, backend="eager", max_inflight_bytes=frames_in_flight * frame_bytes
    )
    pipeline = LocalPipeline(config)
    faces: list[int] = []
    items = [WorkItem(m) for m in discover([folder]).media]
    pipeline.process(items, lambda r: faces.append(r.faces))
    assert faces == [6] * 6
    # Reservations really happened (the peak is what was reserved), within the budget.
    assert frame_bytes <= pipeline.inflight.peak <= frames_in_flight * frame_bytes
    assert pipeline.inflight.used == 0


@pytest.mark.slow
def test_88_megapixel_16_bit_png_stays_within_memory(tmp_path, tiny_checkpoint):
    # 11000 x 8000 16-bit grayscale: 264 MB as RGB. Converting it through float64 peaked
    # 2.3 GB above an ordinary run.
    ramp = (np.arange(11000, dtype=np.uint32) * 65535 // 10999).astype(np.uint16)
    Image.fromarray(np.repeat(ramp[None, :], 8000, axis=0)).save(
        tmp_path / "big.png", compress_level=1
    )
    shutil.copy(photos_dir() / "t1.jpg", tmp_path / "small.jpg")

    def peak_rss_kb(image: Path) -> int:
        code = (
            "import resource, sys; from agr_batch.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, "run", str(image), "--out", str(tmp_path / "o.parquet"),
             "--model", str(tiny_checkpoint), "--backend", "eager", "--quiet"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rss, code = out.stdout.split()
        assert code == "0", out.stderr
        return int(rss)

    extra_mb = (peak_rss_kb(tmp_path / "big.png") - peak_rss_kb(tmp_path / "small.jpg")) / 1024
    assert extra_mb < 800, extra_mb  # the RGB frame, the decoded picture and one strip
