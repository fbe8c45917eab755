"""``make demo``: run agr-batch end to end on the bundled example.

1. Builds the example: a 12 s 720p video of real people (insightface's bundled group photo,
   swaying slowly like a lobby camera's view) and a folder with two photos.
2. Uses the checkpoint in ``$AGR_MODEL`` when set; otherwise trains a ``tiny`` demo model on
   synthetic faces. ITS LABELS ARE MEANINGLESS: the synthetic data only proves the plumbing.
   Train on FairFace (README) for real predictions.
3. Runs ``agr-batch run`` and prints the aggregates.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from agr_batch.samples import photos_dir, write_scene_video

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
log = logging.getLogger("demo")

BANNER = """
############################################################################
#  DEMO MODEL: trained for a minute on SYNTHETIC cartoon faces.            #
#  Its age / gender / race labels are MEANINGLESS. Face counts, tracks     #
#  and visitor numbers are real. Train on FairFace for real labels:        #
#    agr-train fit --data FAIRFACE_DIR --arch compact --out runs/compact   #
############################################################################
"""


def _cli(*args: str, capture: bool = False) -> str:
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / args[0]), *args[1:]]
    log.info("$ %s", " ".join(cmd[:1] + [a if len(a) < 80 else "…" for a in cmd[1:]]))
    done = subprocess.run(cmd, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    if done.returncode not in (0, 1):
        raise SystemExit(f"demo: {args[0]} {args[1]} failed with exit code {done.returncode}")
    return done.stdout or ""


def build_example() -> tuple[Path, Path]:
    """The example video and photo folder (built once)."""
    video = OUT / "lobby.mp4"
    if not video.exists():
        log.info("building the example video %s", video)
        write_scene_video(video, seconds=12.0, size=(1280, 720))
    photos = OUT / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in ("t1.jpg", "Tom_Hanks_54745.png"):
        if not (photos / name).exists():
            shutil.copy(photos_dir() / name, photos / name)
    return video, photos


def _marked_synthetic(checkpoint: Path) -> bool:
    from agr_batch.checkpoint import read_payload

    training = json.loads(read_payload(checkpoint)["metadata"]).get("training", {})
    return training.get("synthetic") is True


def demo_model() -> Path:
    """``$AGR_MODEL``, or a tiny model trained on synthetic faces (cached in examples/out)."""
    env = os.environ.get("AGR_MODEL")
    if env:
        log.info("using AGR_MODEL=%s", env)
        return Path(env)
    cached = OUT / "demo-model.pt"
    data = OUT / "synth"
    if cached.exists() and not _marked_synthetic(cached):
        # Trained by an older version, which did not record its data: the report would not
        # know that the labels are meaningless. Train it again.
        cached.unlink()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(OUT / "run", ignore_errors=True)
    if not cached.exists():
        if not (data / "fairface_label_val.csv").exists():
            _cli("agr-train", "synth", "--out", str(data), "--n", "1500", "--size", "96")
        stdout = _cli(
            "agr-train", "fit", "--data", str(data), "--arch", "tiny", "--out", str(OUT / "run"),
            "--epochs", "6", "--batch-size", "64", "--lr", "3e-3", "--device", "cpu", capture=True,
        )  # fmt: skip
        best = Path(stdout.strip().splitlines()[-1])
        shutil.copy(best, cached)
    print(BANNER, file=sys.stderr)
    return cached


def main() -> int:
    """Build the example, get a model, run agr-batch and print the aggregates."""
    logging.basicConfig(level=logging.INFO, format="demo: %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    video, photos = build_example()
    model = demo_model()
    stats, tracks = OUT / "stats.parquet", OUT / "tracks.parquet"
    _cli(
        "agr-batch", "run", str(video), str(photos), "--model", str(model),
        "--out", str(stats), "--tracks", str(tracks), "--window", "5",
    )  # fmt: skip
    table = pq.read_table(stats).to_pandas()
    table["source"] = table["source"].map(lambda s: os.path.relpath(s, OUT))
    print("\nStats table (" + str(stats) + "):")
    print(table.drop(columns=["start_time"]).to_string(index=False))
    people = pq.read_table(tracks).to_pandas()
    print(
        f"\n{len(people)} visitors, {int(people.faces.sum())} faces, "
        f"{int(people.classified_faces.sum())} classified; tracks in {tracks}"
    )
    print(
        "\nA shareable HTML report (cells of fewer than 5 people suppressed):\n"
        f"  agr-batch report {os.path.relpath(stats)} --out report.html"
    )
    if not os.environ.get("AGR_MODEL"):
        print(BANNER, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
