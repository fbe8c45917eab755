"""Compiled engines are built and first run in a child process: crashes, hangs and wrong
answers there are contained, recorded and (for ``auto``) fallen back from.

Faults are injected into the real child process with a ``sitecustomize`` module on its
``PYTHONPATH`` that replaces the compiler (or the AOTInductor loader) before any project
code runs, so the product's own builder really segfaults, hangs, raises or computes garbage.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import agr_batch.engines as engines
from agr_batch.checkpoint import load_checkpoint
from agr_batch.engines import EngineBuildError, EngineCache, engine_for_checkpoint, isolate
from agr_batch.engines.base import cache_fields
from tests import media

REPO = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")

SITE = """
import os, signal, sys, time

MODE = {mode!r}
with open({pidfile!r}, "a") as f:
    f.write(str(os.getpid()) + "\\n")
if {slow_child!r} and "agr_batch.engines.child" in sys.orig_argv:
    time.sleep(8)  # a child still importing torch when its parent is killed

import torch
import torch._inductor


def _segfault(*a, **k):
    os.kill(os.getpid(), signal.SIGSEGV)


def _hang(*a, **k):
    time.sleep(3600)


def _raise(*a, **k):
    raise RuntimeError("injected compiler failure")


def _garbage(model, *a, **k):
    def fn(x):
        return tuple(torch.randn(x.shape[0], n) * 10 for n in (9, 2, 7))

    return fn


if MODE == "compile-segfault":
    torch.compile = _segfault
elif MODE == "compile-hang":
    torch.compile = _hang
elif MODE == "compile-raise":
    torch.compile = _raise
elif MODE == "compile-garbage":
    torch.compile = _garbage
elif MODE == "aoti-load-segfault":
    torch._inductor.aoti_load_package = _segfault

if {auto_compiled!r}:
    # What ``auto`` picks on a CUDA machine, so the CPU can exercise that path.
    import agr_batch.engines as engines

    _resolve = engines.resolve_backend
    engines.resolve_backend = lambda b, **kw: "compiled" if b == "auto" else _resolve(b, **kw)
"""


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    return load_checkpoint(tiny_run.best_checkpoint)


@pytest.fixture
def inject(tmp_path, monkeypatch):
    """``inject(mode)`` makes every new Python process load the fault ``mode``."""

    def _inject(mode: str, *, auto_compiled: bool = False, slow_child: bool = False) -> Path:
        folder = tmp_path / "site"
        folder.mkdir(exist_ok=True)
        pidfile = tmp_path / "pids.txt"
        (folder / "sitecustomize.py").write_text(
            SITE.format(
                mode=mode, pidfile=str(pidfile), auto_compiled=auto_compiled, slow_child=slow_child
            )
        )
        path = [str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
        return pidfile

    return _inject


def _build(ckpt, backend, cache_dir, **kw):
    return engine_for_checkpoint(backend, ckpt, device=CPU, cache_dir=cache_dir, **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_compiled_engine_agrees_and_its_check_is_reused(ckpt, synth_data, tmp_path, monkeypatch):
    from agr_batch.stages.preprocess import chips_to_tensor

    files = sorted((synth_data.root / "val").glob("*.jpg"))[:200]
    chips = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    x = chips_to_tensor(chips, ckpt.meta.preprocess)
    engine = _build(ckpt, "compiled", tmp_path, opt_batch=64)
    assert engine.name == "compiled" and engine.details["buckets"] == [16, 64]
    assert engine.details["child_check_s"] > 0
    assert engine.details["build_s"] >= engine.details["child_check_s"]
    with torch.inference_mode():
        got, want = engine(x), ckpt.model(x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert (g.argmax(1) == w.argmax(1)).float().mean().item() >= 0.99
    fields = cache_fields(engine_ctx(ckpt, tmp_path, "compiled"), "compiled")
    verdict = EngineCache(tmp_path).verdict("compiled", fields)
    assert verdict is not None and verdict["ok"] and verdict["agreement"] >= 0.9

    # The verdict is trusted next time: no second child process.
    def no_child(*a, **k):
        raise AssertionError("the check ran again")

    monkeypatch.setattr(isolate, "run_child", no_child)
    again = _build(ckpt, "compiled", tmp_path, opt_batch=64)
    assert again.details["child_check_s"] == 0


def engine_ctx(ckpt, cache_dir, backend, opt_batch=64):
    from agr_batch.engines import BuildContext, ModelSource, resolve_precision

    h, w = ckpt.meta.preprocess.input_size
    return BuildContext(
        model=ckpt.model,
        source=ModelSource("classifier", ckpt.path, ckpt.file_sha256, (3, h, w)),
        device=CPU,
        precision=resolve_precision("auto", CPU, backend),
        cache=EngineCache(cache_dir),
        opt_batch=opt_batch,
    )


def test_segfault_while_loading_aoti_package_is_contained(ckpt, tmp_path, inject, monkeypatch):
    # The failure seen on a CUDA machine: the package builds, loading it kills the process.
    inject("aoti-load-segfault")
    with pytest.raises(EngineBuildError, match="SIGSEGV") as info:
        _build(ckpt, "inductor", tmp_path)
    assert "\n" not in str(info.value)
    fields = cache_fields(engine_ctx(ckpt, tmp_path, "inductor"), "inductor")
    verdict = EngineCache(tmp_path).verdict("inductor", fields)
    assert verdict is not None and verdict["ok"] is False
    assert Path(verdict["log"]).read_text().count("Segmentation fault") >= 1

    # Marked bad: the next run neither retries nor crashes, and says how to retry.
    monkeypatch.setattr(isolate, "run_child", lambda *a, **k: pytest.fail("retried"))
    with pytest.raises(EngineBuildError, match=r"delete .*verdict\.json to try again"):
        _build(ckpt, "inductor", tmp_path)


def test_auto_falls_back_with_one_warning_when_the_child_raises(
    ckpt, tmp_path, inject, monkeypatch, caplog
):
    inject("compile-raise")
    monkeypatch.setattr(engines, "resolve_backend", lambda b, **kw: "compiled")
    with caplog.at_level(logging.WARNING):
        engine = _build(ckpt, "auto", tmp_path)
    assert engine.name == "channels_last"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "compiled engine unusable here" in warnings[0].getMessage()
    assert "injected compiler failure" in warnings[0].getMessage()
    x = torch.randn(3, 3, *ckpt.meta.preprocess.input_size)
    with torch.inference_mode():
        assert engine(x).race.shape == (3, 7)


def test_a_hanging_build_is_killed_at_its_timeout(ckpt, tmp_path, inject):
    pidfile = inject("compile-hang")
    t0 = time.perf_counter()
    with pytest.raises(EngineBuildError, match="timed out after 20 s"):
        _build(ckpt, "compiled", tmp_path, build_timeout_s=20)
    assert time.perf_counter() - t0 < 60
    pids = [int(p) for p in pidfile.read_text().split()]
    assert pids and not any(_alive(p) for p in pids)


def test_an_engine_that_disagrees_with_eager_is_refused(ckpt, tmp_path, inject):
    inject("compile-garbage")
    with pytest.raises(EngineBuildError, match="disagrees with eager fp32"):
        _build(ckpt, "compiled", tmp_path)


def test_cli_exits_2_with_one_line_for_an_explicit_backend_that_crashes(ckpt, tmp_path, inject):
    inject("compile-segfault")
    proc = subprocess.run(
        [sys.executable, "-m", "agr_batch.cli", "compile", str(ckpt.path), "--backend",
         "compiled", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "SIGSEGV" in errors[0], proc.stderr


@pytest.mark.slow
def test_run_survives_a_crashing_build_on_the_fallback(ckpt, tmp_path, inject):
    """The default backend's child segfaults: the run finishes with one warning line."""
    inject("compile-segfault", auto_compiled=True)
    photo = tmp_path / "people.jpg"
    Image.fromarray(media.load_rgb("t1.jpg")).save(photo)
    out = tmp_path / "stats.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "agr_batch.cli", "run", str(photo), "--out", str(out),
         "--model", str(ckpt.path), "--device", "cpu", "--json",
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    # The model was trained on synthetic faces, and the run says so once.
    synthetic = [ln for ln in lines if "trained on synthetic faces" in ln]
    warnings = [ln for ln in lines if ln not in synthetic]
    assert len(synthetic) == 1 and len(warnings) == 1, proc.stderr
    assert "compiled engine unusable here" in warnings[0] and "SIGSEGV" in warnings[0]
    summary = json.loads(proc.stdout)
    assert summary["backend"].startswith("channels_last") and summary["faces"] == 6
    assert out.exists()


@pytest.mark.slow
def test_quiet_run_prints_nothing_on_success_even_while_compiling(ckpt, tmp_path):
    """Cron mails whatever reaches stderr: compiling must not leak torch's warnings."""
    photo = tmp_path / "people.jpg"
    Image.fromarray(media.load_rgb("t1.jpg")).save(photo)
    proc = subprocess.run(
        [sys.executable, "-m", "agr_batch.cli", "run", str(photo), "--out",
         str(tmp_path / "s.parquet"), "--model", str(ckpt.path), "--device", "cpu",
         "--backend", "compiled", "--quiet", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    assert (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("slow_child", [False, True], ids=["building", "still-importing"])
def test_a_killed_run_leaves_no_build_behind(ckpt, tmp_path, inject, slow_child):
    """SIGKILL of the run while its child builds, or before the child has even imported
    torch (its watchdog then starts after the parent is gone): the child exits too."""
    pidfile = inject("compile-hang", slow_child=slow_child)
    script = (
        "import sys, torch\n"
        "from agr_batch.checkpoint import load_checkpoint\n"
        "from agr_batch.engines import engine_for_checkpoint\n"
        "ckpt = load_checkpoint(sys.argv[1])\n"
        "cpu = torch.device('cpu')\n"
        "engine_for_checkpoint('compiled', ckpt, device=cpu, cache_dir=sys.argv[2])\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(ckpt.path), str(tmp_path / "cache")], cwd=REPO
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        if len(pids) >= 2:  # the run and its child have started
            break
        time.sleep(0.2)
    else:
        parent.kill()
        pytest.fail("the child build never started")
    time.sleep(3)  # the child is now inside the hanging compiler
    parent.kill()
    parent.wait()
    child = [p for p in pids if p != parent.pid]
    deadline = time.monotonic() + (20 if slow_child else 10)
    while any(_alive(p) for p in child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in child)
