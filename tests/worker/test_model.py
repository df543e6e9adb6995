"""The redshift model's architecture: size, shapes, the names converted checkpoints map onto."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from services.worker.model import RedshiftModel, parameter_count  # noqa: E402

LEGACY_PARAMETERS = 15.9e6  # "about 15.9 M parameters" (shared/LEGACY.md)


@pytest.fixture(scope="module")
def model(integration: None) -> RedshiftModel:
    torch.manual_seed(0)
    return RedshiftModel().eval()


def test_size_matches_the_legacy_model(model: RedshiftModel) -> None:
    assert abs(parameter_count(model) - LEGACY_PARAMETERS) / LEGACY_PARAMETERS < 0.01


def test_forward_takes_legacy_inputs(model: RedshiftModel) -> None:
    images = torch.randn(4, 5, 32, 32)
    magnitudes = torch.randn(4, 5, dtype=torch.float64)  # partitions store magnitudes as float64
    with torch.inference_mode():
        out = model([images, magnitudes])
        again = model((images, magnitudes))
    assert out.shape == (4, 1) and out.dtype == torch.float32
    assert torch.equal(out, again), "eval mode is deterministic"
    assert torch.isfinite(out).all()


def test_branch_widths(model: RedshiftModel) -> None:
    images = torch.randn(2, 5, 32, 32)
    with torch.inference_mode():
        assert model.vit(images).shape == (2, 1096)
        assert model.cnn(images).shape == (2, 1096)
        assert model.magnitudes(torch.randn(2, 5)).shape == (2, 1024)
    assert model.head[0].in_features == 3216


def test_vit_parameters_keep_timm_names(model: RedshiftModel) -> None:
    names = set(model.state_dict())
    for expected in ("vit.patch_embed.proj.weight", "vit.cls_token", "vit.pos_embed", "vit.blocks.11.attn.qkv.weight",
                     "vit.blocks.0.mlp.fc2.bias", "vit.fc_norm.weight", "vit.head.weight"):
        assert expected in names
    assert not model.vit.pos_embed.requires_grad, "MAE's position embedding is fixed sine-cosine"
