"""The child process that builds, loads and checks one compiled engine.

Run by :func:`agr_batch.engines.isolate.run_child` as ``python -m agr_batch.engines.child``
with a JSON request on stdin. The last line on stdout is the JSON verdict; everything else
(compiler chatter, a fault handler's trace) goes to stderr, which the parent keeps in a log
file. If native code crashes here, only this process dies.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import logging
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    """Handle one request; the exit code is 0 whenever a verdict was printed."""
    faulthandler.enable()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from agr_batch.checkpoint import load_checkpoint
    from agr_batch.engines import BACKENDS, BuildContext, EngineCache
    from agr_batch.engines.cache import sha256_file
    from agr_batch.engines.isolate import MAX_PROB_DIFF, MIN_AGREEMENT, compare_with_eager

    request = json.loads(sys.stdin.read())
    t0 = time.perf_counter()
    device = torch.device(request["device"])
    ckpt = load_checkpoint(request["checkpoint"], device=device)
    reference = copy.deepcopy(ckpt.model).float().eval()
    ctx = BuildContext(
        model=ckpt.model,
        input_size=tuple(request["input_size"]),
        device=device,
        precision=request["precision"],
        checkpoint_sha256=ckpt.file_sha256,
        cache=EngineCache(request["cache_dir"]),
        max_batch=request["max_batch"],
        opt_batch=request["opt_batch"],
        batch_sizes=tuple(request["batch_sizes"]),
        checkpoint_path=Path(request["checkpoint"]),
        in_child=True,
    )
    engine = BACKENDS.create(request["backend"], ctx=ctx)
    agreement, diff = compare_with_eager(engine, reference, ctx)
    ok = agreement >= MIN_AGREEMENT and diff <= MAX_PROB_DIFF
    artefact = engine.details.get("path")
    verdict = {
        "ok": ok,
        "reason": "ok"
        if ok
        else (
            f"disagrees with eager fp32: label agreement {agreement:.3f} "
            f"(need >= {MIN_AGREEMENT}), probability difference {diff:.3g} "
            f"(need <= {MAX_PROB_DIFF})"
        ),
        "agreement": agreement,
        "max_prob_diff": diff,
        "artefact": artefact,
        "artefact_sha256": sha256_file(Path(artefact)) if artefact else None,
        "child_s": round(time.perf_counter() - t0, 2),
    }
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
