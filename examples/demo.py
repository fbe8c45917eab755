"""``make demo``: build a tiny checkpoint and describe it.

The processor (``agr-batch run``) is not built yet; until it is, the demo exercises what
exists: the model registry, self-describing checkpoints and ``agr-batch info``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from agr_batch.checkpoint import save_checkpoint
from agr_batch.models import create_model

OUT = Path(__file__).resolve().parent / "out"


def main() -> int:
    """Write an untrained ``tiny`` checkpoint and run ``agr-batch info`` on it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(exist_ok=True)
    ckpt = OUT / "tiny-untrained.pt"
    save_checkpoint(ckpt, create_model("tiny"), training={"note": "untrained demo weights"})
    logging.info("demo: the processor is not built yet; showing the checkpoint tooling only")
    return subprocess.call([sys.executable, "-m", "agr_batch.cli", "info", str(ckpt)])


if __name__ == "__main__":
    sys.exit(main())
