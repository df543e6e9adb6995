"""Partitions: the legacy ``{i}.pt`` TensorDataset files, and ``.npz`` or ``.safetensors`` with the same arrays.

A legacy partition is ``torch.save(TensorDataset(images, magnitudes, redshifts))``: images
float32 ``[n, 5, 32, 32]`` (SDSS u, g, r, i, z; no normalisation), magnitudes float64
``[n, 5]``, redshifts ``[n]``. It is loaded with ``weights_only=True`` and only TensorDataset
allow-listed, so a partition can never run code; what it holds is checked against those shapes
before anything uses it. The ``.npz`` and ``.safetensors`` forms hold the arrays by name
(``images``, ``magnitudes``, optional ``redshifts``) and cannot carry code at all.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch.utils.data import TensorDataset

from services.keys import partition_number
from services.worker.errors import PartitionError

BANDS, SIDE = 5, 32
#: Input bytes per sample in the legacy files (image float32 + magnitudes float64).
BYTES_PER_SAMPLE = BANDS * SIDE * SIDE * 4 + BANDS * 8


@dataclass(frozen=True)
class Partition:
    images: torch.Tensor  # float32 [n, 5, 32, 32]
    magnitudes: torch.Tensor  # float64 [n, 5]
    redshifts: torch.Tensor | None  # [n], when labels are present

    def __len__(self) -> int:
        return int(self.images.shape[0])


def partition_index(key: str) -> int:
    """The ``i`` of ``.../{i}.pt``: partitions sort by it, so ``2.pt`` comes before ``10.pt``."""
    number = partition_number(key)
    if number is None:
        raise PartitionError(f"{key!r} is not a partition name ({{i}}.pt, {{i}}.npz or {{i}}.safetensors)",
                             partition=key)
    return number


@functools.cache
def _allow_tensor_dataset() -> None:
    """Let ``weights_only`` loads build TensorDataset, for this whole process, once.

    Not ``torch.serialization.safe_globals(...)`` around each load: that context manager edits
    one process-wide set and removes the type on exit, so a load in another thread (the
    prefetcher, a second in-process rank) could lose it halfway and fail.
    """
    torch.serialization.add_safe_globals([TensorDataset])


def load_partition(raw: bytes, name: str) -> Partition:
    """Parse one partition's bytes (``.pt``, ``.npz`` or ``.safetensors``, by ``name``); raises PartitionError."""
    try:
        if name.endswith(".npz"):
            with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
                return _named({key: torch.from_numpy(arrays[key]) for key in arrays.files}, name)
        if name.endswith(".safetensors"):
            return _named(safetensors.torch.load(raw), name)
        _allow_tensor_dataset()
        loaded = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except PartitionError:
        raise
    except Exception as exc:  # torch and numpy raise many types for a corrupt or hostile file
        raise PartitionError(f"{name}: cannot be read as a partition ({type(exc).__name__}: {exc})",
                             partition=name) from None
    tensors = loaded.tensors if isinstance(loaded, TensorDataset) else None
    if tensors is None or len(tensors) not in (2, 3):
        raise PartitionError(f"{name}: expected TensorDataset(images, magnitudes[, redshifts]), got "
                             f"{type(loaded).__name__}", partition=name)
    return _checked(tensors[0], tensors[1], tensors[2] if len(tensors) == 3 else None, name)


def _named(arrays: dict[str, torch.Tensor], name: str) -> Partition:
    missing = {"images", "magnitudes"} - arrays.keys()
    if missing:
        raise PartitionError(f"{name}: missing arrays {', '.join(sorted(missing))} (has {', '.join(sorted(arrays))})",
                             partition=name)
    return _checked(arrays["images"], arrays["magnitudes"], arrays.get("redshifts"), name)


def _checked(images: torch.Tensor, magnitudes: torch.Tensor, redshifts: torch.Tensor | None, name: str) -> Partition:
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
    return Partition(images.float(), magnitudes.double(), None if redshifts is None else redshifts.reshape(-1))


def save_partition(partition: Partition, path: Path) -> None:
    """Write ``partition`` in the legacy form (``.pt``), as ``.npz`` or ``.safetensors``, by ``path``'s suffix."""
    arrays = {"images": partition.images, "magnitudes": partition.magnitudes}
    if partition.redshifts is not None:
        arrays["redshifts"] = partition.redshifts
    if path.suffix == ".npz":
        with open(path, "wb") as out:
            np.savez(out, **{key: value.numpy() for key, value in arrays.items()})
        return
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({key: value.contiguous() for key, value in arrays.items()}, str(path))
        return
    tensors = [partition.images, partition.magnitudes]
    if partition.redshifts is not None:
        tensors.append(partition.redshifts)
    torch.save(TensorDataset(*tensors), path)
