from __future__ import annotations

import json
import zipfile

import pytest
import torch
from click.testing import CliRunner

from agr_batch.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from agr_batch.cli import main
from agr_batch.models import create_model
from agr_batch.stages.preprocess import PreprocessSpec, chips_to_tensor
from agr_batch.storage.hashing import sha256_file


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", hidden=48)
    # Move BN statistics off their defaults so the round trip checks buffers too.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, model, training={"epochs": 3, "val_accuracy": {"age": 0.5}})
    return path, model.eval()


def test_round_trip_gives_identical_outputs(tiny_ckpt):
    path, model = tiny_ckpt
    ckpt = load_checkpoint(path)
    assert ckpt.meta.arch == "tiny"
    assert ckpt.meta.overrides == {"hidden": 48}
    assert ckpt.meta.preprocess == PreprocessSpec(input_size=(64, 64))
    assert ckpt.meta.training["epochs"] == 3
    assert ckpt.meta.labels["race"][2] == "Latino_Hispanic"
    assert ckpt.file_sha256 == sha256_file(path)
    assert not ckpt.model.training
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), ckpt.model(x), strict=True):
            assert torch.equal(a, b)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt
    bad = tmp_path / "trunc.pt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_checkpoint(bad)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_garbage_file(tmp_path):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def test_foreign_checkpoint(tmp_path):
    bad = tmp_path / "foreign.pt"
    torch.save(create_model("tiny").state_dict(), bad)
    with pytest.raises(CheckpointError, match="not an agr-batch checkpoint"):
        load_checkpoint(bad)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    bad = tmp_path / "evil.pt"
    torch.save({"agr_batch_checkpoint": 1, "payload": Evil()}, bad)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)


def _rewrite(path, tmp_path, mutate):
    payload = torch.load(path, weights_only=True)
    mutate(payload)
    out = tmp_path / "mutated.pt"
    torch.save(payload, out)
    return out


def test_tampered_weights_fail_hash(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt

    def mutate(p):
        key = next(iter(p["state_dict"]))
        p["state_dict"][key] = p["state_dict"][key] + 1

    with pytest.raises(CheckpointError, match="do not match their recorded hash"):
        load_checkpoint(_rewrite(path, tmp_path, mutate))


def test_unknown_arch(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt

    def mutate(p):
        meta = json.loads(p["metadata"])
        meta["arch"] = "vit_huge"
        p["metadata"] = json.dumps(meta)

    with pytest.raises(CheckpointError, match="unknown model 'vit_huge'"):
        load_checkpoint(_rewrite(path, tmp_path, mutate))


@pytest.mark.parametrize("arch", ["compact", "paper"])
def test_arch_that_does_not_fit_the_weights_is_one_line_exit_2(tiny_ckpt, tmp_path, arch):
    # The weights hash stays valid: only the recorded arch is wrong (same layer names as
    # tiny's, other shapes), so load_state_dict itself raised a 60-line RuntimeError.
    path, _ = tiny_ckpt

    def mutate(p):
        meta = json.loads(p["metadata"])
        meta["arch"] = arch
        meta["overrides"] = {}
        p["metadata"] = json.dumps(meta)

    bad = _rewrite(path, tmp_path, mutate)
    with pytest.raises(CheckpointError, match=f"weights do not fit arch '{arch}'") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)
    for command in (["info", str(bad)], ["run", str(tmp_path), "--out", str(tmp_path / "o.parquet"),
                                         "--model", str(bad)]):  # fmt: skip
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and arch in result.stderr


def test_wrong_label_count(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt

    def mutate(p):
        meta = json.loads(p["metadata"])
        meta["labels"]["race"] = meta["labels"]["race"][:4]
        p["metadata"] = json.dumps(meta)

    with pytest.raises(CheckpointError, match="race labels: expected 7 classes, got 4"):
        load_checkpoint(_rewrite(path, tmp_path, mutate))


def test_newer_format_rejected(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt

    def mutate(p):
        p["agr_batch_checkpoint"] = 99

    with pytest.raises(CheckpointError, match="newer than this agr-batch"):
        load_checkpoint(_rewrite(path, tmp_path, mutate))


def test_checkpoint_is_a_plain_zip_without_code(tiny_ckpt):
    path, _ = tiny_ckpt
    with zipfile.ZipFile(path) as z:
        assert any(n.endswith("data.pkl") for n in z.namelist())


def test_preprocess_normalises_with_spec():
    spec = PreprocessSpec(input_size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    chips = torch.full((2, 16, 16, 3), 255, dtype=torch.uint8).numpy()
    x = chips_to_tensor(chips, spec)
    assert x.shape == (2, 3, 8, 8)
    torch.testing.assert_close(x, torch.ones(2, 3, 8, 8))
    with pytest.raises(ValueError, match="input_size"):
        PreprocessSpec(input_size=(4,))


def test_info_cli(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "arch          tiny" in result.output
    assert "GFLOPs/face" in result.output
    result = CliRunner().invoke(main, ["info", str(path), "--json"])
    data = json.loads(result.output)
    assert data["parameters"] == sum(
        p.numel() for p in create_model("tiny", hidden=48).parameters()
    )
    assert data["input_size"] == [64, 64]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"x")
    result = CliRunner().invoke(main, ["info", str(bad)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(bad) in result.output


def test_preprocess_output_is_contiguous_nchw():
    spec = PreprocessSpec(input_size=(8, 8))
    x = chips_to_tensor(torch.zeros(3, 8, 8, 3, dtype=torch.uint8).numpy(), spec)
    assert x.is_contiguous()


def test_info_says_when_the_training_data_is_not_recorded(tiny_ckpt):
    path, _ = tiny_ckpt
    result = CliRunner().invoke(main, ["info", str(path)])
    assert "trained on    not recorded" in result.output and "SYNTHETIC" not in result.output
    assert (
        json.loads(CliRunner().invoke(main, ["info", str(path), "--json"]).output)["synthetic"]
        is None
    )
