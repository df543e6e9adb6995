"""Engine choice (COSMIC_WORKER_ENGINE, the auto rule, bf16 masking) and the torch-free partition reader."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from services.envconfig import SettingsError
from services.worker import engines, settings
from services.worker.ptfile import PtFileError, _Storage, _Unpickler, read_tensor_dataset

pytestmark = pytest.mark.unit


def test_auto_applies_the_measured_rule_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "AUTO_RULE", {False: "openvino", True: "torch-bf16-mlp"})
    assert engines.resolve_engine("auto", has_bf16=False) == "openvino"
    assert engines.resolve_engine("auto", has_bf16=True) == "torch-bf16-mlp"
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    assert engines.resolve_engine("auto") == "torch-bf16-mlp"
    assert engines.resolve_engine("torch-fp32", has_bf16=True) == "torch-fp32"  # an explicit choice stands


def test_auto_runs_torch_where_the_lean_engine_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    assert engines.resolve_engine("auto", has_bf16=False) == "torch"


def test_an_unknown_engine_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="COSMIC_WORKER_ENGINE must be one of auto, openvino"):
        engines.resolve_engine("onnx")
    monkeypatch.setenv("COSMIC_WORKER_ENGINE", "tensorflow")
    with pytest.raises(SettingsError, match="COSMIC_WORKER_ENGINE must be one of"):
        settings.load()


def test_torch_engines_pick_their_precision() -> None:
    assert engines.torch_precision("torch-fp32", "bf16") == "fp32"
    assert engines.torch_precision("torch-bf16-mlp", "") == "bf16-mlp"
    assert engines.torch_precision("torch", "bf16") == "bf16" and engines.torch_precision("torch", "") == "auto"


def test_onednn_isa_below_bf16_masks_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert engines.cpu_has_bf16() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    with open("/proc/cpuinfo") as info:
        assert engines.cpu_has_bf16() == ("avx512_bf16" in (flags := info.read()) or "amx_bf16" in flags)


def _archive(pickled: bytes, storages: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("p/data.pkl", pickled)
        archive.writestr("p/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"p/data/{key}", data)
    return buffer.getvalue()


def test_a_tensor_that_reads_past_its_storage_is_refused() -> None:
    archive = zipfile.ZipFile(io.BytesIO(_archive(b"", {"0": np.arange(6, dtype=np.float32).tobytes()})))
    unpickler = _Unpickler(b"", archive, "p/")
    storage = _Storage(np.float32, "0", 6)
    assert unpickler._rebuild_tensor(storage, 1, (2, 2), (3, 1)).tolist() == [[1.0, 2.0], [4.0, 5.0]]
    with pytest.raises(PtFileError, match="reads past its storage"):
        unpickler._rebuild_tensor(storage, 2, (2, 2), (3, 1))
    with pytest.raises(PtFileError, match="cannot be read"):
        unpickler._rebuild_tensor(storage, 0, (2, 2), (-1, 1))


def test_only_tensor_datasets_and_plain_tensors_are_read() -> None:
    with pytest.raises(PtFileError, match="not a torch zip archive"):
        read_tensor_dataset(b"\x80\x02}q\x00.")  # a bare pickle: torch before 1.6
    with pytest.raises(PtFileError, match=r"refused to load global builtins\.eval"):
        read_tensor_dataset(_archive(b"\x80\x02cbuiltins\neval\nq\x00.", {}))


def test_legacy_partitions_read_as_torch_reads_them() -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import TensorDataset

    images = torch.rand(4, 5, 32, 32)
    view = torch.arange(40, dtype=torch.float64).reshape(5, 8)[:, 1:6].t()  # strided, offset, shared storage
    buffer = io.BytesIO()
    torch.save(TensorDataset(images, view[:4], torch.arange(4, dtype=torch.float32)), buffer)
    got = read_tensor_dataset(buffer.getvalue())
    assert [a.dtype for a in got] == [np.float32, np.float64, np.float32]
    assert np.array_equal(got[0], images.numpy()) and np.array_equal(got[1], view[:4].numpy())
    assert got[0].flags.writeable and got[2].tolist() == [0, 1, 2, 3]
