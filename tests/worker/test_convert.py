"""``cosmic convert-checkpoint``: a legacy whole-model pickle becomes our state_dict, and nothing in it runs.

The legacy fixture is built here: classes registered under the original module paths
(``blocks.model_vit_inception``, ``blocks.photoz``, ``timm.models...``) only for the test, wired like
the AstroMAE fine-tune model (same attribute names, shapes and forward, including its quirks:
ConvBlock's conv has a bias, ``conv2d_init`` is a plain Conv2d, and the last, "custom"
InceptionBlock builds a 5x5 ``branch3`` it never runs), wrapped in ``DataParallel`` and saved
whole, as the users' checkpoint was.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from services.cli import main  # noqa: E402
from services.worker import convert  # noqa: E402
from services.worker.checkpoints import (  # noqa: E402
    CONVERTED_SUFFIX,
    CheckpointError,
    LegacyCheckpointError,
    build_model,
    legacy_name,
    load_state_dict,
)
from services.worker.model import RedshiftModel  # noqa: E402

WIDTH, HEADS = 192, 3


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, width: int, is_custom: bool = False) -> None:
        super().__init__()
        self.is_custom = is_custom
        self.branch1 = ConvBlock(cin, width, 1)
        self.branch2 = nn.Sequential(ConvBlock(cin, width, 1), ConvBlock(width, width, 3))
        self.branch3 = nn.Sequential(ConvBlock(cin, width, 1), ConvBlock(width, width, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBlock(cin, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch4) if self.is_custom else (
            self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


class Input_Mix_Model(nn.Module):  # the original name
    def __init__(self) -> None:
        super().__init__()
        self.conv2d_init = nn.Conv2d(5, 32, kernel_size=(1, 1))
        self.avgpool = nn.AvgPool2d(2, 2)
        self.avgpool2 = nn.AvgPool2d(2, 2)
        layers: list[nn.Module] = [nn.Linear(5, 1024)]
        for _ in range(4):
            layers += [nn.ReLU(), nn.Linear(1024, 1024)]
        self.magnitude_block = nn.Sequential(*layers)
        self.vis_inception = nn.Sequential(
            self.conv2d_init, self.avgpool, InceptionBlock(32, 16), InceptionBlock(64, 16), nn.AvgPool2d(2),
            InceptionBlock(64, 8), InceptionBlock(32, 8), nn.AvgPool2d(2), InceptionBlock(32, 4, is_custom=True),
            nn.Flatten(), nn.Linear(192, 1096), nn.ReLU(), nn.Linear(1096, 1096))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat((self.vis_inception(x[0]), self.magnitude_block(x[1].float())), 1)


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.grid_size, self.num_patches = (32, 32), (8, 8), (4, 4), 16
        self.proj = nn.Conv2d(5, WIDTH, 8, stride=8)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.scale = HEADS, (WIDTH // HEADS) ** -0.5
        self.qkv = nn.Linear(WIDTH, WIDTH * 3)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        self.drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(WIDTH, eps=1e-6), Attention()
        self.drop_path = nn.Identity()
        self.norm2, self.mlp = nn.LayerNorm(WIDTH, eps=1e-6), Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT_Astro(nn.Module):  # the original name
    def __init__(self) -> None:
        super().__init__()
        self.fc_norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.head = nn.Linear(WIDTH, WIDTH)
        self.inception_model = Input_Mix_Model()
        self.cls_token = nn.Parameter(torch.randn(1, 1, WIDTH) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, WIDTH) * 0.02, requires_grad=False)
        self.blocks = nn.Sequential(*(Block() for _ in range(12)))
        self.patch_embed = PatchEmbed()
        self.vit_block = nn.Sequential(nn.Linear(WIDTH, 1096), nn.ReLU(), nn.Linear(1096, 1096))
        self.concat_block = nn.Sequential(nn.Linear(3216, 1024), nn.ReLU(), nn.Linear(1024, 1))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        tokens = self.patch_embed(x[0])
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1) + self.pos_embed
        tokens = self.blocks(tokens)
        vit = self.vit_block(self.head(self.fc_norm(tokens[:, 1:, :].mean(dim=1))))
        return self.concat_block(torch.cat((vit, self.inception_model(x)), 1))


ORIGINAL_MODULES = {
    "blocks.model_vit_inception": [ViT_Astro],
    "blocks.photoz": [Input_Mix_Model, InceptionBlock, ConvBlock],
    "timm.models.vision_transformer": [Block, Attention],
    "timm.models.layers.mlp": [Mlp],
    "timm.models.layers.patch_embed": [PatchEmbed],
}


@pytest.fixture
def original_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """The original classes importable under their original module paths, for this test only."""
    packages = {".".join(name.split(".")[:depth]) for name in ORIGINAL_MODULES
                for depth in range(1, name.count(".") + 2)}
    for name in sorted(packages):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for module_name, classes in ORIGINAL_MODULES.items():
        for cls in classes:
            monkeypatch.setattr(cls, "__module__", module_name)
            setattr(sys.modules[module_name], cls.__name__, cls)


def _randomise_batchnorm(model: nn.Module) -> None:
    """Running statistics away from 0/1, so a lost or misplaced buffer changes the predictions."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.fixture
def legacy(integration: None, tmp_path: Path, original_source: None) -> tuple[Path, nn.Module]:
    """A legacy checkpoint (a whole pickled DataParallel(ViT_Astro)) and the live model it holds."""
    torch.manual_seed(0)
    original = ViT_Astro()
    _randomise_batchnorm(original)
    wrapped = nn.DataParallel(original).eval()
    path = tmp_path / "Fine_Tune_Model" / "Mixed_Inception_z_VITAE_Base_Img_Full_New_Full.pt"
    path.parent.mkdir()
    torch.save(wrapped, path)
    return path, wrapped


def test_loader_refuses_the_legacy_file_and_names_the_command(legacy: tuple[Path, nn.Module]) -> None:
    path, _ = legacy
    with pytest.raises(LegacyCheckpointError, match="cosmic convert-checkpoint") as info:
        load_state_dict(path)
    assert "DataParallel" in str(info.value) and str(path) in str(info.value)


def test_converted_model_predicts_as_the_original(legacy: tuple[Path, nn.Module]) -> None:
    path, original = legacy
    result = convert.convert(path)
    assert result.output == path.with_name(path.stem + CONVERTED_SUFFIX) and result.output.is_file()
    assert result.source == "legacy model"
    model = build_model(load_state_dict(result.output))
    images, magnitudes = torch.randn(6, 5, 32, 32), torch.randn(6, 5, dtype=torch.float64) * 3 + 18
    with torch.inference_mode():
        expected, got = original([images, magnitudes]), model([images, magnitudes])
    assert got.shape == (6, 1)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()
    with torch.device("meta"):
        assert result.parameters == sum(p.numel() for p in RedshiftModel().parameters())


def test_every_tensor_is_mapped_by_name_not_by_order(legacy: tuple[Path, nn.Module]) -> None:
    path, original = legacy
    flat = convert.flatten(convert.read_legacy(path))
    assert set(flat) == set(original.state_dict()), "flattened like state_dict(): same names, aliases included"
    mapped = convert.to_our_names(flat)
    assert set(mapped) == set(RedshiftModel().state_dict())
    assert torch.equal(mapped["cnn.features.2.b3.1.0.weight"], flat["module.inception_model.vis_inception.2."
                                                                     "branch2.1.conv.weight"])


def test_a_state_dict_with_the_original_names_loads_directly(tmp_path: Path, legacy: tuple[Path, nn.Module]) -> None:
    _, original = legacy
    path = tmp_path / "original_names.pt"
    torch.save(original.state_dict(), path)  # module.inception_model.conv2d_init.* included, as an alias
    model = build_model(load_state_dict(path))
    batch = [torch.randn(2, 5, 32, 32), torch.randn(2, 5, dtype=torch.float64)]
    with torch.inference_mode():
        assert torch.allclose(model(batch), original(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("original", "ours"), [
    ("cls_token", "vit.cls_token"),
    ("blocks.11.attn.qkv.weight", "vit.blocks.11.attn.qkv.weight"),
    ("fc_norm.bias", "vit.fc_norm.bias"),
    ("head.weight", "vit.head.weight"),
    ("vit_block.2.bias", "vit.proj.2.bias"),
    ("concat_block.0.weight", "head.0.weight"),
    ("inception_model.magnitude_block.8.weight", "magnitudes.8.weight"),
    ("inception_model.vis_inception.0.bn.running_var", "cnn.features.0.1.running_var"),
    ("inception_model.vis_inception.5.branch4.1.conv.weight", "cnn.features.5.pool.1.0.weight"),
    ("inception_model.vis_inception.8.branch3.0.bn.num_batches_tracked", None),
    ("inception_model.vis_inception.5.branch3.0.bn.num_batches_tracked", "cnn.features.5.b5.0.1.num_batches_tracked"),
    ("inception_model.vis_inception.10.weight", "cnn.proj.0.weight"),
    ("inception_model.vis_inception.12.bias", "cnn.proj.2.bias"),
    ("inception_model.conv2d_init.weight", None),
    ("inception_model.vis_inception.0.weight", "cnn.features.0.weight"),
])
def test_name_table(original: str, ours: str | None) -> None:
    assert legacy_name(original) == ours


def test_unmappable_names_are_listed(tmp_path: Path, legacy: tuple[Path, nn.Module]) -> None:
    path, original = legacy
    original.module.extra = nn.Linear(2, 2)  # a part our model does not have
    torch.save(original, path)
    with pytest.raises(CheckpointError, match=r"extra\.weight") as info:
        convert.convert(path)
    assert "extra.bias" in str(info.value)
    assert not path.with_name(path.stem + CONVERTED_SUFFIX).exists()


@pytest.mark.integration
def test_names_fall_back_to_order_when_every_shape_matches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reference = RedshiftModel().state_dict()
    renamed = {f"layer{i}": tensor.clone() for i, tensor in enumerate(reference.values())}
    mapped = convert.to_our_names(renamed)
    assert list(mapped) == list(reference)
    assert all(torch.equal(mapped[name], reference[name]) for name in reference)
    assert "checkpoint_names_matched_by_order" in caplog.text
    renamed["layer0"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="layer0"):
        convert.to_our_names(renamed)


class _Payload:
    def __init__(self, call: object, argument: str) -> None:
        self.call, self.argument = call, argument

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.call, (self.argument,)


@pytest.mark.parametrize(("call", "refused"), [(os.system, "posix.system"), (eval, "builtins.eval")])
def test_a_hostile_pickle_is_refused_and_never_runs(tmp_path: Path, call: object, refused: str) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload(call, command), "model": nn.Linear(2, 2)}, path)  # payload first
    with pytest.raises(convert.RefusedGlobal, match=refused.replace(".", r"\.")) as info:
        convert.read_legacy(path)
    assert info.value.name == refused and "evil.pt" in str(info.value)
    with pytest.raises(CheckpointError, match=r"system|eval"):
        load_state_dict(path)
    assert main(["convert-checkpoint", str(path)]) == 1
    assert not marker.exists()


def test_the_unpickler_alone_refuses_unknown_globals() -> None:
    raw = pickle.dumps(_Payload(print, "hello"), protocol=2)
    with pytest.raises(convert.RefusedGlobal, match=r"builtins\.print"):
        convert.RestrictedUnpickler(io.BytesIO(raw)).load()


def test_cli_converts_and_reports(legacy: tuple[Path, nn.Module], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = legacy
    output = path.with_name("elsewhere.safetensors")
    assert main(["convert-checkpoint", str(path), "--output", str(output), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert output.is_file() and str(output) in out and "parameters" in out
    assert not path.with_name(path.stem + CONVERTED_SUFFIX).exists()


@pytest.mark.integration
def test_cli_converts_a_plain_state_dict_too(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"model": RedshiftModel().state_dict()}, path)
    assert main(["convert-checkpoint", str(path)]) == 0
    converted = tmp_path / f"weights{CONVERTED_SUFFIX}"
    assert converted.is_file()
    if importlib.util.find_spec("onnxscript") and importlib.util.find_spec("openvino"):  # the export extra
        from services.worker.export import current

        assert current(converted), "convert-checkpoint exports the converted checkpoint beside it"


def test_cli_missing_file_is_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert-checkpoint", str(tmp_path / "nope.pt")]) == 1
    err = capsys.readouterr().err
    assert "nope.pt" in err and "no such checkpoint" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert-checkpoint"])
    assert info.value.code == 2
