"""Loading checkpoints: state_dicts in every accepted form, never a pickled model, strict fits."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from services.worker.checkpoints import (  # noqa: E402
    CONVERTED_SUFFIX,
    CheckpointError,
    LegacyCheckpointError,
    build_model,
    choose_checkpoint,
    converted_path,
    load_state_dict,
    save_state_dict,
)
from services.worker.model import RedshiftModel  # noqa: E402


@pytest.fixture(scope="module")
def model(integration: None) -> RedshiftModel:
    torch.manual_seed(0)
    return RedshiftModel().eval()


@pytest.fixture(scope="module")
def batch() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.randn(3, 5, 32, 32, generator=generator), torch.randn(3, 5, generator=generator).double()]


def _same_predictions(a: nn.Module, b: nn.Module, batch: list[torch.Tensor]) -> bool:
    with torch.inference_mode():
        return torch.allclose(a(batch), b(batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict", "model_state_dict"])
def test_pt_round_trip(tmp_path: Path, model: RedshiftModel, batch: list[torch.Tensor], wrapper: str | None) -> None:
    path = tmp_path / "weights.pt"
    state = model.state_dict()
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    rebuilt = build_model(loaded)
    assert not rebuilt.training and _same_predictions(rebuilt, model, batch)


def test_mae_style_checkpoint_with_its_args_loads(tmp_path: Path, model: RedshiftModel) -> None:
    path = tmp_path / "checkpoint-99.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 99}, path)
    assert set(load_state_dict(path)) == set(model.state_dict())


def test_safetensors_round_trip_is_atomic(tmp_path: Path, model: RedshiftModel, batch: list[torch.Tensor]) -> None:
    path = tmp_path / f"model{CONVERTED_SUFFIX}"
    path.write_bytes(b"an older file, replaced whole")
    state = model.state_dict()
    state["vit.head.weight"] = state["vit.head.weight"].t().contiguous().t()  # not contiguous: written anyway
    save_state_dict(state, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no .partial left behind"
    assert _same_predictions(build_model(load_state_dict(path)), model, batch)


def test_failed_save_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(Exception):  # noqa: B017 (whatever safetensors raises for a non-tensor)
        save_state_dict({"x": "not a tensor"}, path)  # type: ignore[dict-item]
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_dataparallel_prefix_is_stripped(tmp_path: Path, model: RedshiftModel) -> None:
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    assert set(load_state_dict(path)) == set(model.state_dict())
    torch.save({"module.a": torch.zeros(1), "a": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match=r"'module\.a' and 'a'"):
        load_state_dict(path)


def test_strict_mismatch_lists_missing_and_unexpected(model: RedshiftModel) -> None:
    state = dict(model.state_dict())
    del state["vit.cls_token"], state["head.2.bias"]
    state["surprise.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as info:
        build_model(state)
    message = str(info.value)
    assert "missing 2" in message and "vit.cls_token" in message and "head.2.bias" in message
    assert "unexpected 1" in message and "surprise.weight" in message


def test_shape_mismatch_is_a_checkpoint_error(model: RedshiftModel) -> None:
    state = dict(model.state_dict())
    state["head.2.weight"] = torch.zeros(2, 1024)
    with pytest.raises(CheckpointError, match=r"head\.2\.weight"):
        build_model(state)


def test_other_dtypes_are_cast_to_the_model(model: RedshiftModel, batch: list[torch.Tensor]) -> None:
    state = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    rebuilt = build_model(state)
    assert rebuilt.head[2].weight.dtype == torch.float32 and _same_predictions(rebuilt, model, batch)
    assert not rebuilt.vit.pos_embed.requires_grad


def test_whole_pickled_model_is_legacy(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(nn.DataParallel(nn.Sequential(nn.Linear(5, 1))), path)
    with pytest.raises(LegacyCheckpointError, match=r"cosmic convert-checkpoint .*legacy\.pt") as info:
        load_state_dict(path)
    assert "torch.nn.parallel.data_parallel.DataParallel" in str(info.value)


def test_other_globals_are_refused_but_not_called_legacy(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"when": datetime.timedelta(days=1)}, path)
    with pytest.raises(CheckpointError, match=r"datetime\.timedelta") as info:
        load_state_dict(path)
    assert not isinstance(info.value, LegacyCheckpointError)


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("corrupt.pt", b"\x80\x02 not really a pickle", "cannot be read"),
    ("corrupt.safetensors", b"\x00" * 16, "not a readable safetensors"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        load_state_dict(tmp_path / name)
    assert name in str(info.value)


@pytest.mark.parametrize(("value", "reason"), [
    ([torch.zeros(1)], "holds a list"),
    ({"w": torch.zeros(1), "epoch": 3}, "epoch"),
    ({}, "no tensors"),
])
def test_not_a_state_dict(tmp_path: Path, value: object, reason: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(value, path)
    with pytest.raises(CheckpointError, match=reason):
        load_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_state_dict(tmp_path / "absent.pt")


def test_converted_path_is_beside_the_original() -> None:
    assert converted_path(Path("/m/Fine_Tune_Model/best.pt")) == Path(f"/m/Fine_Tune_Model/best{CONVERTED_SUFFIX}")
    assert converted_path(Path("a/model.pth")).name == "model.cosmic.safetensors"
    assert converted_path(Path("a/model.cosmic.safetensors")).name == "model.cosmic.safetensors"


def test_choose_checkpoint_prefers_converted_then_safetensors_then_pickles() -> None:
    folder = "Anomaly Detection/Fine_Tune_Model/"
    keys = [folder, f"{folder}z.pt", f"{folder}a.pth", f"{folder}notes.txt", f"{folder}b.safetensors",
            f"{folder}z{CONVERTED_SUFFIX}", f"{folder}a{CONVERTED_SUFFIX}"]
    assert choose_checkpoint(keys) == f"{folder}a{CONVERTED_SUFFIX}"
    assert choose_checkpoint(keys[:5]) == f"{folder}b.safetensors"
    assert choose_checkpoint(keys[:4]) == f"{folder}a.pth"
    assert choose_checkpoint(list(reversed(keys[:4]))) == f"{folder}a.pth", "order of listing does not matter"
    assert choose_checkpoint([f"{folder}m.ckpt", f"{folder}m.bin"]) == f"{folder}m.bin"
    assert choose_checkpoint([folder, f"{folder}notes.txt", f"{folder}x.pt.partial"]) is None
    assert choose_checkpoint([]) is None
