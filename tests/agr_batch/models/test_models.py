from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from agr_batch.models import (
    HeadLogits,
    RegistryError,
    count_parameters,
    create_model,
    gflops_per_face,
    list_models,
    register_model,
)

ALL = ["alexnet", "compact", "densenet161", "mobilenet_v2", "paper", "resnet34", "tiny"]


def test_registry_lists_every_model():
    assert list_models() == ALL


def test_unknown_model_fails_loudly():
    with pytest.raises(RegistryError, match=r"unknown model 'resnet35'.*paper"):
        create_model("resnet35")


def test_duplicate_registration_fails():
    with pytest.raises(RegistryError, match="already registered"):
        register_model("paper")(lambda: None)


def test_unknown_override_fails():
    with pytest.raises(TypeError):
        create_model("tiny", widthz=(1, 2, 3))


@pytest.mark.parametrize("name", ALL)
def test_forward_contract(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    h, w = model.input_size
    x = torch.randn(3, 3, h, w)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        heads = model.forward_heads(feats)
    assert isinstance(out, HeadLogits)
    assert out.age.shape == (3, 9)
    assert out.gender.shape == (3, 2)
    assert out.race.shape == (3, 7)
    assert feats.ndim == 2 and feats.shape[0] == 3
    for a, b in zip(out, heads, strict=True):
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()


def test_paper_preset_matches_the_paper():
    model = create_model("paper")
    params = count_parameters(model)
    assert abs(params - 35.3e6) / 35.3e6 <= 0.02, params
    assert model.input_size == (128, 128)
    assert 2.5 < gflops_per_face(model) < 4.0
    # Race branch uses AlphaDropout, the others plain Dropout.
    assert isinstance(model.heads.race[2], torch.nn.AlphaDropout)
    assert type(model.heads.age[2]) is torch.nn.Dropout
    assert type(model.heads.gender[2]) is torch.nn.Dropout


def test_size_ordering_of_variants():
    assert count_parameters(create_model("tiny")) < 500_000
    compact = create_model("compact")
    paper = create_model("paper")
    assert count_parameters(compact) < count_parameters(paper) / 10
    assert gflops_per_face(compact) < gflops_per_face(paper) / 3


def test_tiny_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_model("tiny").train()
    x = torch.randn(4, 3, *model.input_size)
    out = model(x)
    loss = sum(torch.nn.functional.cross_entropy(o, torch.zeros(4, dtype=torch.long)) for o in out)
    loss.backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_overrides_change_input_size():
    model = create_model("paper", input_size=(224, 224))
    assert model.input_size == (224, 224)
    # Adaptive pooling keeps the parameter count independent of the input size.
    assert count_parameters(model) == count_parameters(create_model("paper"))
    out = model.eval()(torch.randn(1, 3, 224, 224))
    assert out.age.shape == (1, 9)


@pytest.mark.parametrize("name", ALL)
def test_export_with_dynamic_batch(name):
    model = create_model(name).eval()
    h, w = model.input_size
    batch = Dim("batch", min=1, max=256)
    ep = export(model, (torch.randn(2, 3, h, w),), dynamic_shapes=({0: batch},))
    exported = ep.module()
    for b in (1, 5):
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            got = exported(x)
            want = model(x)
        for g, e in zip(got, want, strict=True):
            assert g.shape == e.shape
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
