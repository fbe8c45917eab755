"""Start-up time of the ``agr-batch`` command line: the answers that should come at once.

Each case runs ``agr-batch`` in a fresh Python process (``--repeat`` times; best and median
wall seconds) and records whether torch, NumPy or PyArrow were imported. The cases: help,
usage errors, ``status`` of a dataset, ``info`` of a checkpoint, and the lock check of a scan
that overlaps a running one (exit 3). Prints a Markdown table.

    .venv/bin/python benchmarks/cli_startup.py [--repeat 5]

``info`` loads the checkpoint with torch to check its weights and count parameters and
GFLOPs, so it pays torch's import; the other cases should not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = """
import atexit, json, sys
OUT = sys.argv[1]
def report():
    with open(OUT, "w") as f:
        json.dump({m: m in sys.modules for m in ("torch", "numpy", "pyarrow")}, f)
atexit.register(report)
from agr_batch.cli import main
sys.argv = ["agr-batch", *sys.argv[2:]]
main()
"""


def measure(args: list[str], repeat: int, tmp: Path) -> tuple[int, float, float, dict[str, bool]]:
    walls = []
    code = 0
    loaded: dict[str, bool] = {}
    out = tmp / "modules.json"
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(out), *args], capture_output=True, text=True
        )
        walls.append(time.perf_counter() - t0)
        code = proc.returncode
        loaded = json.loads(out.read_text())
    return code, min(walls), statistics.median(walls), loaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    import torch

    from agr_batch.checkpoint import save_checkpoint
    from agr_batch.commands.scan.state import STATE_DIR, DatasetLock, State
    from agr_batch.models import create_model

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = tmp / "tiny.pt"
        torch.manual_seed(0)
        save_checkpoint(model, create_model("tiny"))
        root, dataset = tmp / "cams", tmp / "dataset"
        root.mkdir()
        State(dataset / STATE_DIR).close()  # an empty dataset's state
        busy = tmp / "busy"
        holder = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; from pathlib import Path\n"
             "from agr_batch.commands.scan.state import DatasetLock\n"
             f"DatasetLock(Path({str(busy / STATE_DIR)!r})).acquire()\n"
             "print('held', flush=True); time.sleep(3600)"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        del DatasetLock
        cases = [
            ("agr-batch --help", ["--help"]),
            ("agr-batch run --help", ["run", "--help"]),
            ("usage error (--window 0)",
             ["run", str(root), "--out", str(tmp / "o.parquet"), "--model", str(model),
              "--window", "0"]),
            ("usage error (no model)", ["run", str(root), "--out", str(tmp / "o.parquet")]),
            ("status DATASET", ["status", str(dataset)]),
            ("scan lock check (exit 3)",
             ["scan", str(root), "--out", str(busy), "--model", str(model), "--quiet"]),
            ("info CKPT", ["info", str(model)]),
        ]  # fmt: skip
        env_model = os.environ.pop("AGR_MODEL", None)
        rows = []
        try:
            for label, argv in cases:
                rows.append((label, *measure(argv, args.repeat, tmp)))
        finally:
            holder.kill()
            if env_model is not None:
                os.environ["AGR_MODEL"] = env_model
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average {os.getloadavg()[0]:.1f}; "
        f"{args.repeat} runs per case\n"
    )
    print("| command | exit | best s | median s | torch | NumPy | PyArrow |")
    print("|---|---:|---:|---:|---|---|---|")
    for label, code, best, median, loaded in rows:
        marks = " | ".join("yes" if loaded.get(m) else "no" for m in ("torch", "numpy", "pyarrow"))
        print(f"| {label} | {code} | {best:.2f} | {median:.2f} | {marks} |")


if __name__ == "__main__":
    main()
