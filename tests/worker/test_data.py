"""Partition files: the legacy TensorDataset form, .npz, safe loading, shape checks."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.data import TensorDataset  # noqa: E402

from services.worker.data import (  # noqa: E402
    BYTES_PER_SAMPLE,
    Partition,
    PartitionError,
    load_partition,
    partition_index,
    save_partition,
)


def sample(n: int = 6, labels: bool = True) -> Partition:
    rng = np.random.default_rng(n)
    return Partition(rng.random((n, 5, 32, 32), dtype=np.float32), rng.random((n, 5)),
                     rng.random(n, dtype=np.float32) if labels else None)


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".safetensors"])
@pytest.mark.parametrize("labels", [True, False])
def test_round_trip(tmp_path: Path, suffix: str, labels: bool) -> None:
    original = sample(labels=labels)
    path = tmp_path / f"3{suffix}"
    save_partition(original, path)
    loaded = load_partition(path.read_bytes(), path.name)
    assert len(loaded) == 6 and np.array_equal(loaded.images, original.images)
    assert np.array_equal(loaded.magnitudes, original.magnitudes) and loaded.magnitudes.dtype == np.float64
    assert (loaded.redshifts is None) == (not labels)


def test_loads_in_many_threads_at_once_all_succeed(tmp_path: Path) -> None:
    """The prefetcher and in-process ranks load concurrently; allowing TensorDataset must not race."""
    path = tmp_path / "1.pt"
    save_partition(sample(n=2), path)
    raw = path.read_bytes()
    with ThreadPoolExecutor(max_workers=8) as pool:
        loaded = list(pool.map(lambda _: len(load_partition(raw, "1.pt")), range(400)))
    assert loaded == [2] * 400


def test_legacy_bytes_per_sample() -> None:
    assert BYTES_PER_SAMPLE == 20_520  # shared/LEGACY.md


def test_numeric_order_of_partition_names() -> None:
    keys = ["100MB/10.pt", "100MB/2.pt", "100MB/1.pt"]
    assert sorted(keys, key=partition_index) == ["100MB/1.pt", "100MB/2.pt", "100MB/10.pt"]
    assert partition_index("25MB/7.safetensors") == 7 and partition_index("7.npz") == 7
    with pytest.raises(PartitionError):
        partition_index("100MB/readme.txt")


class Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_pickled_code_is_never_run() -> None:
    buffer = io.BytesIO()
    torch.save({"x": Exploit()}, buffer)
    with pytest.raises(PartitionError, match=r"refused to load global posix\.system"):
        load_partition(buffer.getvalue(), "1.pt")


@pytest.mark.parametrize(("tensors", "message"), [
    ((torch.zeros(2, 3, 32, 32), torch.zeros(2, 5)), "images must be"),
    ((torch.zeros(2, 5, 32, 32), torch.zeros(3, 5)), "magnitudes must be"),
    ((torch.zeros(2, 5, 32, 32), torch.zeros(2, 5), torch.zeros(5)), "redshifts must hold"),
])
def test_wrong_shapes_are_refused(tensors: tuple[object, ...], message: str) -> None:
    dataset = TensorDataset(torch.zeros(1))
    dataset.tensors = tensors  # TensorDataset itself refuses mismatched lengths; a file need not
    buffer = io.BytesIO()
    torch.save(dataset, buffer)
    with pytest.raises(PartitionError, match=message):
        load_partition(buffer.getvalue(), "1.pt")


def test_garbage_is_refused() -> None:
    with pytest.raises(PartitionError):
        load_partition(b"definitely not a partition", "1.pt")
    with pytest.raises(PartitionError):
        load_partition(b"PK\x03\x04junk", "1.npz")
    with pytest.raises(PartitionError):
        load_partition(b"\x08\x00\x00\x00\x00\x00\x00\x00{}junk", "1.safetensors")


def test_named_forms_need_both_arrays(tmp_path: Path) -> None:
    import safetensors.torch

    path = tmp_path / "4.safetensors"
    safetensors.torch.save_file({"images": torch.zeros(2, 5, 32, 32)}, str(path))
    with pytest.raises(PartitionError, match="missing arrays magnitudes"):
        load_partition(path.read_bytes(), path.name)
