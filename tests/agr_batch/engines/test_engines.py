from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from agr_batch.checkpoint import load_checkpoint
from agr_batch.cli import main
from agr_batch.engines import (
    BackendUnavailableError,
    Engine,
    EngineCache,
    engine_for_checkpoint,
    list_backends,
    resolve_precision,
)
from agr_batch.engines.base import pad_sizes_for

CPU = torch.device("cpu")
# bf16 keeps ~3 significant digits: probabilities of a confident model move by well under this.
PROB_TOL = 0.03


@pytest.fixture(scope="module")
def ckpt(tiny_run):
    """``tiny`` trained on the synthetic faces: predictions with real margins."""
    return load_checkpoint(tiny_run.best_checkpoint)


@pytest.fixture(scope="module")
def batch(synth_data, ckpt):
    """The held-out synthetic faces, preprocessed exactly as the processor does."""
    from PIL import Image

    from agr_batch.stages.preprocess import chips_to_tensor

    files = sorted((synth_data.root / "val").glob("*.jpg"))[:300]
    chips = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return chips_to_tensor(chips, ckpt.meta.preprocess)


def _engine(ckpt, backend, cache_dir, **kw):
    return engine_for_checkpoint(backend, ckpt, device=CPU, cache_dir=cache_dir, **kw)


def _agreement(engine, reference, x):
    with torch.inference_mode():
        got = engine(x)
        want = reference(x)
    rates, diffs = [], []
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape
        rates.append((g.argmax(1) == w.argmax(1)).float().mean().item())
        diffs.append((g.softmax(1) - w.softmax(1)).abs().max().item())
    return min(rates), max(diffs)


def test_backends_registered():
    assert list_backends() == ["channels_last", "compiled", "eager", "inductor", "tensorrt"]


def test_precision_resolution():
    assert resolve_precision("auto", CPU, "eager") == "fp32"
    assert resolve_precision("fp32", CPU, "channels_last") == "fp32"
    assert resolve_precision("auto", CPU, "channels_last") in ("bf16", "fp32")
    with pytest.raises(ValueError, match="fp16 is a GPU precision"):
        resolve_precision("fp16", CPU, "inductor")


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_channels_last_agrees_with_eager(ckpt, batch, tmp_path, precision):
    reference = _engine(ckpt, "eager", tmp_path)
    engine = _engine(ckpt, "channels_last", tmp_path, precision=precision)
    rate, diff = _agreement(engine, reference, batch)
    assert rate >= 0.99
    assert diff <= PROB_TOL


@pytest.mark.slow
def test_inductor_agrees_caches_and_is_chosen_by_auto(ckpt, batch, tmp_path):
    reference = _engine(ckpt, "eager", tmp_path)
    # Without a cached engine, auto takes the zero-start-up path.
    assert _engine(ckpt, "auto", tmp_path).name == "channels_last"
    engine = _engine(ckpt, "inductor", tmp_path)
    # Built, loaded and run in a child process first; here it is loaded from the cache.
    assert engine.details["child_check_s"] > 0
    rate, diff = _agreement(engine, reference, batch)
    assert rate >= 0.99 and diff <= PROB_TOL
    # Any batch size 1..256 runs without a rebuild (dynamic batch dimension).
    for n in (1, 7, 64, 256):
        assert engine(batch[:n]).age.shape == (n, 9)
    # A channels_last view of the same batch must give the same answer (strides unchecked
    # by compiled code).
    with torch.inference_mode():
        strided = engine(batch[:64].contiguous(memory_format=torch.channels_last))
        plain = engine(batch[:64])
    for a, b in zip(strided, plain, strict=True):
        torch.testing.assert_close(a, b)
    again = _engine(ckpt, "inductor", tmp_path)
    assert again.details["cache_hit"] is True and again.details["child_check_s"] == 0
    assert again.details["path"] == engine.details["path"]
    chosen = _engine(ckpt, "auto", tmp_path)
    assert chosen.name == "inductor" and chosen.details["cache_hit"] is True


def test_tensorrt_without_cuda_is_a_clear_error(ckpt, tmp_path):
    with pytest.raises(BackendUnavailableError, match=r"TensorRT.*agr-batch\[tensorrt\]"):
        _engine(ckpt, "tensorrt", tmp_path)


def test_tensorrt_cli_exits_2_with_one_line(ckpt, tmp_path):
    result = CliRunner().invoke(
        main, ["compile", str(ckpt.path), "--backend", "tensorrt", "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "TensorRT" in lines[0] and "tensorrt" in lines[0]


def test_padding_to_fixed_sizes_keeps_results(ckpt, batch):
    model = ckpt.model
    plain = Engine("eager", "fp32", model)
    padded = Engine("eager", "fp32", model, pad_sizes=pad_sizes_for(256))
    seen = []

    def spy(x):
        seen.append(x.shape[0])
        return model(x)

    spied = Engine("eager", "fp32", spy, pad_sizes=pad_sizes_for(256))
    with torch.inference_mode():
        for n in (1, 5, 9, 64, 100):
            for a, b in zip(plain(batch[:n]), padded(batch[:n]), strict=True):
                assert a.shape[0] == n
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            spied(batch[:n])
    assert seen == [8, 8, 16, 64, 128]
    assert pad_sizes_for(256) == (8, 16, 32, 64, 128, 256)


def test_cache_rejects_corrupt_and_stale_entries(tmp_path):
    cache = EngineCache(tmp_path)
    fields = {"checkpoint_sha256": "abc", "backend": "inductor", "versions": {"torch": "x"}}
    builds = []

    def build(path):
        builds.append(1)
        path.write_bytes(b"engine-bytes")

    assert cache.lookup("inductor", fields, ".pt2") is None
    path = cache.store("inductor", fields, ".pt2", build)
    assert cache.lookup("inductor", fields, ".pt2") == path
    # Same key, corrupted bytes: removed, so the caller rebuilds.
    path.write_bytes(b"engine-bytez")
    assert cache.lookup("inductor", fields, ".pt2") is None
    assert not path.exists()
    path = cache.store("inductor", fields, ".pt2", build)
    # A sidecar whose fields differ (e.g. hand-edited or from another version) is stale.
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["fields"]["versions"]["torch"] = "y"
    sidecar.write_text(json.dumps(meta))
    assert cache.lookup("inductor", fields, ".pt2") is None
    # A different key never sees another's entry.
    cache.store("inductor", fields, ".pt2", build)
    assert cache.lookup("inductor", {**fields, "precision": "fp32"}, ".pt2") is None
    assert len(builds) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def bad(path):
        path.write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.store("inductor", {"k": 1}, ".pt2", bad)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_probabilities_sum_to_one_via_classifier(ckpt, tmp_path):
    from agr_batch.stages.classify import Classifier

    engine = _engine(ckpt, "channels_last", tmp_path)
    clf = Classifier(ckpt, batch_size=16, forward=engine)
    chips = np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3), dtype=np.uint8)
    preds = clf.predict(chips)
    assert len(preds) == 40
    for head in (preds.age, preds.gender, preds.race):
        np.testing.assert_allclose(head.sum(1), 1.0, atol=1e-4)


def test_batches_beyond_the_engine_range_are_split(ckpt, batch):
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return ckpt.model(x)

    engine = Engine("eager", "fp32", fn, max_batch=128)
    with torch.inference_mode():
        out = engine(batch[:300])
        ref = ckpt.model(batch[:300])
    assert calls == [128, 128, 44]
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_classifier_runs_each_batch_once(ckpt):
    from agr_batch.stages.classify import Classifier

    calls = []

    def forward(x):
        calls.append(x.shape[0])
        return ckpt.model(x)

    clf = Classifier(ckpt, batch_size=16, forward=forward)
    chips = np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3), dtype=np.uint8)
    assert len(clf.predict(chips)) == 40
    assert calls == [16, 16, 8]
