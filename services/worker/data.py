"""Partitions: the legacy ``{i}.pt`` TensorDataset files, and ``.npz`` or ``.safetensors`` with the same arrays.

A legacy partition is ``torch.save(TensorDataset(images, magnitudes, redshifts))``: images
float32 ``[n, 5, 32, 32]`` (SDSS u, g, r, i, z; no normalisation), magnitudes float64
``[n, 5]``, redshifts ``[n]``. It is read without torch (:mod:`.ptfile`: a restricted unpickler
that knows only TensorDataset and plain tensors, so a partition can never run code), into numpy
arrays: the native path never imports torch, and only writing a legacy ``.pt`` needs it. What a
partition holds is checked against those shapes before anything uses it. The ``.npz`` and
``.safetensors`` forms hold the arrays by name (``images``, ``magnitudes``, optional
``redshifts``) and cannot carry code at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.numpy

from services.keys import partition_number
from services.worker.errors import PartitionError
from services.worker.ptfile import read_tensor_dataset

BANDS, SIDE = 5, 32
#: Input bytes per sample in the legacy files (image float32 + magnitudes float64).
BYTES_PER_SAMPLE = BANDS * SIDE * SIDE * 4 + BANDS * 8


@dataclass(frozen=True)
class Partition:
    images: np.ndarray  # float32 [n, 5, 32, 32]
    magnitudes: np.ndarray  # float64 [n, 5]
    redshifts: np.ndarray | None  # [n], when labels are present

    def __len__(self) -> int:
        return int(self.images.shape[0])


def partition_index(key: str) -> int:
    """The ``i`` of ``.../{i}.pt``: partitions sort by it, so ``2.pt`` comes before ``10.pt``."""
    number = partition_number(key)
    if number is None:
        raise PartitionError(f"{key!r} is not a partition name ({{i}}.pt, {{i}}.npz or {{i}}.safetensors)",
                             partition=key)
    return number


def load_partition(raw: bytes, name: str) -> Partition:
    """Parse one partition's bytes (``.pt``, ``.npz`` or ``.safetensors``, by ``name``); raises PartitionError."""
    try:
        if name.endswith(".npz"):
            with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
                return _named({key: arrays[key] for key in arrays.files}, name)
        if name.endswith(".safetensors"):
            return _named(safetensors.numpy.load(raw), name)
        try:
            tensors = read_tensor_dataset(raw)
        except PartitionError as exc:  # ptfile says why; the file's name is ours to add
            raise PartitionError(f"{name}: {exc}", partition=name) from None
    except PartitionError:
        raise
    except Exception as exc:  # numpy and safetensors raise many types for a corrupt or hostile file
        raise PartitionError(f"{name}: cannot be read as a partition ({type(exc).__name__}: {exc})",
                             partition=name) from None
    if len(tensors) not in (2, 3):
        raise PartitionError(f"{name}: expected TensorDataset(images, magnitudes[, redshifts]), got "
                             f"{len(tensors)} tensors", partition=name)
    return _checked(tensors[0], tensors[1], tensors[2] if len(tensors) == 3 else None, name)


def _named(arrays: dict[str, np.ndarray], name: str) -> Partition:
    missing = {"images", "magnitudes"} - arrays.keys()
    if missing:
        raise PartitionError(f"{name}: missing arrays {', '.join(sorted(missing))} (has {', '.join(sorted(arrays))})",
                             partition=name)
    return _checked(arrays["images"], arrays["magnitudes"], arrays.get("redshifts"), name)


def _checked(images: np.ndarray, magnitudes: np.ndarray, redshifts: np.ndarray | None, name: str) -> Partition:
    count = images.shape[0] if images.ndim else 0
    if tuple(images.shape[1:]) != (BANDS, SIDE, SIDE):
        raise PartitionError(f"{name}: images must be [n, {BANDS}, {SIDE}, {SIDE}], got {list(images.shape)}",
                             partition=name)
    if tuple(magnitudes.shape) != (count, BANDS):
        raise PartitionError(f"{name}: magnitudes must be [{count}, {BANDS}], got {list(magnitudes.shape)}",
                             partition=name)
    if redshifts is not None and tuple(redshifts.reshape(-1).shape) != (count,):
        raise PartitionError(f"{name}: redshifts must hold {count} values, got {list(redshifts.shape)}",
                             partition=name)
    return Partition(np.asarray(images, dtype=np.float32), np.asarray(magnitudes, dtype=np.float64),
                     None if redshifts is None else redshifts.reshape(-1))


def save_partition(partition: Partition, path: Path) -> None:
    """Write ``partition`` in the legacy form (``.pt``), as ``.npz`` or ``.safetensors``, by ``path``'s suffix."""
    arrays = {"images": partition.images, "magnitudes": partition.magnitudes}
    if partition.redshifts is not None:
        arrays["redshifts"] = partition.redshifts
    if path.suffix == ".npz":
        with open(path, "wb") as out:
            np.savez(out, **arrays)
        return
    if path.suffix == ".safetensors":
        safetensors.numpy.save_file({key: np.ascontiguousarray(value) for key, value in arrays.items()}, str(path))
        return
    import torch  # only writing the legacy form needs torch (the demo's and tests' data; never the worker)
    from torch.utils.data import TensorDataset

    torch.save(TensorDataset(*(torch.from_numpy(np.ascontiguousarray(value)) for value in arrays.values())), path)
