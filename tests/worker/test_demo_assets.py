"""Demo assets: generated once into the cache, legacy-shaped, and a checkpoint that loads."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from services.worker import demo_assets  # noqa: E402
from services.worker.data import load_partition  # noqa: E402
from services.worker.model import RedshiftModel  # noqa: E402


def test_cache_dir_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COSMIC_CACHE_DIR", str(tmp_path / "c"))
    assert demo_assets.cache_dir() == tmp_path / "c"


def test_partitions_are_made_once(tmp_path: Path) -> None:
    paths = demo_assets.demo_partitions(demo_assets.TINY, 3, root=tmp_path)
    assert [p.name for p in paths] == ["1.pt", "2.pt", "3.pt"]
    stamp = paths[0].stat().st_mtime_ns
    assert demo_assets.demo_partitions(demo_assets.TINY, 3, root=tmp_path)[0].stat().st_mtime_ns == stamp
    loaded = load_partition(paths[1].read_bytes(), paths[1].name)
    assert len(loaded) == demo_assets.TINY_SAMPLES and loaded.redshifts is not None
    with pytest.raises(ValueError, match="unknown partition size"):
        demo_assets.demo_partitions("33MB", 1, root=tmp_path)


def test_legacy_sized_partition_has_the_legacy_sample_count(tmp_path: Path) -> None:
    path = demo_assets.demo_partitions("25MB", 1, root=tmp_path)[0]
    assert len(load_partition(path.read_bytes(), path.name)) == 1278


@pytest.mark.integration
def test_checkpoint_is_a_state_dict_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = demo_assets.demo_checkpoint(root=tmp_path, steps=5, samples=128)
    state = torch.load(path, weights_only=True)
    model = RedshiftModel()
    model.load_state_dict(state)
    assert path.with_suffix(".json").exists()
    monkeypatch.setattr(demo_assets, "fit", lambda **_: pytest.fail("fitted twice"))
    assert demo_assets.demo_checkpoint(root=tmp_path) == path  # cached: no second fit


@pytest.mark.integration
def test_the_fit_exports_the_checkpoint_and_a_stale_export_is_remade(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("openvino")
    from services.worker import export

    path = demo_assets.demo_checkpoint(root=tmp_path, steps=5, samples=128)
    assert export.current(path), "the fit leaves a verified export beside the checkpoint"
    state = torch.load(path, weights_only=True)
    torch.save({name: tensor * 1.01 if tensor.is_floating_point() else tensor for name, tensor in state.items()}, path)
    assert not export.current(path), "an export of the former checkpoint is not current"
    demo_assets.demo_checkpoint(root=tmp_path)
    assert export.current(path)
