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
import os
import sys
import threading
import time
from pathlib import Path

import torch


def _exit_with_parent() -> None:
    """Exit when the parent dies: a killed run must not leave a compiler behind.

    The child runs in its own session (so a timeout can kill its whole group), which also
    means nothing else ends it when the parent is killed outright. The parent passes its pid
    on the command line: a parent killed while this process was still importing torch (seconds
    under load) has already been replaced by a reaper, and ``os.getppid()`` alone would then
    watch the reaper for ever.
    """
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="agr-child-watchdog", daemon=True).start()


def main() -> int:
    """Handle one request; the exit code is 0 whenever a verdict was printed."""
    _exit_with_parent()
    faulthandler.enable()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from agr_batch.engines import BACKENDS, BuildContext, EngineCache
    from agr_batch.engines.isolate import compare_with_eager
    from agr_batch.engines.kinds import ModelSource, model_kind
    from agr_batch.storage.hashing import sha256_file

    request = json.loads(sys.stdin.read())
    t0 = time.perf_counter()
    device = torch.device(request["device"])
    source = ModelSource.from_dict(request["source"])
    kind = model_kind(source.kind)
    model = kind.load(source.path, device)
    reference = copy.deepcopy(model).float().eval()
    ctx = BuildContext(
        model=model,
        source=source,
        device=device,
        precision=request["precision"],
        cache=EngineCache(request["cache_dir"]),
        max_batch=request["max_batch"],
        opt_batch=request["opt_batch"],
        batch_sizes=tuple(request["batch_sizes"]),
        in_child=True,
    )
    engine = BACKENDS.create(request["backend"], ctx=ctx)
    agreement, diff = compare_with_eager(engine, reference, ctx)
    ok = agreement >= kind.min_agreement and diff <= kind.max_diff
    artefact = engine.details.get("path")
    verdict = {
        "ok": ok,
        "reason": "ok"
        if ok
        else (
            f"disagrees with eager fp32: agreement {agreement:.3f} "
            f"(need >= {kind.min_agreement}), largest difference {diff:.3g} "
            f"(need <= {kind.max_diff})"
        ),
        "agreement": agreement,
        "max_diff": diff,
        "artefact": artefact,
        "artefact_sha256": sha256_file(Path(artefact)) if artefact else None,
        "child_s": round(time.perf_counter() - t0, 2),
    }
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
