"""Compiled engines are built, loaded and run in a child process before they are trusted.

A compiled artefact (an AOTInductor package, a TensorRT engine, Inductor's CUDA-graph code)
runs native code that can crash the interpreter: on one CUDA machine loading an AOTInductor
package segfaulted every time. So the first use of such an engine happens in a child
process (``python -m agr_batch.engines.child``) that builds it, loads it, runs it on a
fixed batch and compares it with the eager fp32 model. The main process loads the engine
only after the child reported success, and the verdict is cached beside the artefact: a
good engine is not checked again, a bad one is not retried (until the libraries, the
device or the checkpoint change, which change its key).

A child that crashes, outlives its timeout or disagrees with eager yields a bad verdict;
:func:`ensure_verified` then raises :class:`~agr_batch.engines.base.EngineBuildError`, which
``auto`` turns into a one-line warning and a fallback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from agr_batch.engines.base import BuildContext, EngineBuildError, cache_fields
from agr_batch.engines.cache import EngineCache
from agr_batch.storage.hashing import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What a child build reported.

    Attributes:
        ok: The engine built, loaded, ran and agreed with eager.
        reason: One line: what went wrong, or ``"ok"``.
        build_s: Seconds the child took, start-up included.
        agreement: Lowest per-head argmax agreement with eager fp32.
        max_diff: Largest output difference with eager fp32 (probabilities, heatmaps).
        artefact: Path of the built artefact, for backends that write one.
        artefact_sha256: Its SHA-256 when checked.
        checked_at: UTC time of the check (ISO 8601).
        log: The child's log file.
    """

    ok: bool
    reason: str
    build_s: float = 0.0
    agreement: float | None = None
    max_diff: float | None = None
    artefact: str | None = None
    artefact_sha256: str | None = None
    checked_at: str = ""
    log: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """Build from a stored or reported mapping (unknown keys ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def child_request(backend: str, ctx: BuildContext) -> dict[str, Any]:
    """The JSON request the child process reads on stdin."""
    return {
        "backend": backend,
        "source": ctx.source.to_dict(),
        "device": str(ctx.device),
        "precision": ctx.precision,
        "cache_dir": str(ctx.cache.root),
        "opt_batch": ctx.opt_batch,
        "max_batch": ctx.max_batch,
        "batch_sizes": list(ctx.buckets),
    }


def _still_good(previous: Verdict) -> bool:
    """A good verdict holds while its artefact (if any) is the one that was checked."""
    if previous.artefact is None:
        return True
    path = Path(previous.artefact)
    try:
        return path.is_file() and sha256_file(path) == previous.artefact_sha256
    except OSError:
        return False


def ensure_verified(backend: str, ctx: BuildContext) -> Verdict:
    """Make sure ``backend``'s engine for ``ctx`` has passed a child-process check.

    Returns:
        The verdict (``build_s`` is 0 when a cached verdict was reused).

    Raises:
        EngineBuildError: The engine crashed, hung or disagreed now or in an earlier run.
    """
    cache: EngineCache = ctx.cache or EngineCache()
    fields = cache_fields(ctx, backend)
    stored = cache.verdict(backend, fields)
    if stored is not None:
        previous = Verdict.from_dict(stored)
        where = cache.verdict_path(backend, fields)
        if not previous.ok:
            raise EngineBuildError(
                f"the {backend} engine failed its check on {previous.checked_at[:19]} "
                f"({previous.reason}); delete {where} to try again"
            )
        if _still_good(previous):
            return Verdict.from_dict({**stored, "build_s": 0.0})
    verdict = run_child(backend, ctx)
    cache.record_verdict(backend, fields, asdict(verdict))
    if not verdict.ok:
        raise EngineBuildError(f"the {backend} engine failed its check ({verdict.reason})")
    return verdict


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _last_line(text: str, limit: int | None = None) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def run_child(backend: str, ctx: BuildContext) -> Verdict:
    """Build, load and check ``backend``'s engine in a child process; never raises for it."""
    cache: EngineCache = ctx.cache or EngineCache()
    fields = cache_fields(ctx, backend)
    log_path = cache.verdict_path(backend, fields).with_suffix("").with_suffix(".child.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    request = json.dumps(child_request(backend, ctx))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log.info("%s: building and checking the engine in a child process", backend)
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        # A new session, so a timeout kills the child's compile workers too.
        proc = subprocess.Popen(
            [sys.executable, "-m", "agr_batch.engines.child", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(request, timeout=ctx.build_timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Verdict(
                False,
                f"timed out after {ctx.build_timeout_s:.0f} s",
                time.perf_counter() - t0,
                checked_at=now,
                log=str(log_path),
            )
    elapsed = time.perf_counter() - t0
    if proc.returncode < 0:
        return Verdict(
            False,
            f"the child process died of {_signal_name(-proc.returncode)} (log: {log_path})",
            elapsed,
            checked_at=now,
            log=str(log_path),
        )
    try:
        report = json.loads(_last_line(out) or "null")
    except ValueError:
        report = None
    if not isinstance(report, dict):
        detail = _last_line(log_path.read_text(errors="replace"), limit=300)
        detail = f"exit {proc.returncode}: {detail}" if detail else f"exit {proc.returncode}"
        return Verdict(
            False, f"{detail} (log: {log_path})", elapsed, checked_at=now, log=str(log_path)
        )
    report.update(build_s=elapsed, checked_at=now, log=str(log_path))
    return Verdict.from_dict(report)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def compare_with_eager(
    engine: Any, reference: torch.nn.Module, ctx: BuildContext, *, seed: int = 0
) -> tuple[float, float]:
    """(lowest agreement, largest difference) of ``engine`` against the eager fp32 model.

    Runs a small and a full batch of the model kind's representative inputs, so both a
    padded bucket and the main one are exercised.
    """
    kind = ctx.kind
    gen = torch.Generator().manual_seed(seed)
    sizes = sorted({max(1, ctx.buckets[0] - 1), min(ctx.buckets[-1], 64)})
    agreement, diff = 1.0, 0.0
    with torch.inference_mode():
        for n in sizes:
            x = kind.example(n, ctx.sample_shape, gen).to(ctx.device)
            a, d = kind.compare(tuple(engine(x)), tuple(reference(x)))
            agreement, diff = min(agreement, a), max(diff, d)
    return agreement, diff
