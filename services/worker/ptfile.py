"""Read a legacy partition (``torch.save(TensorDataset(...))``) into numpy arrays, without torch.

The native path must not import torch (1-2 s of every cold start), yet users' partitions are
torch files. A torch file is a zip archive: ``data.pkl`` (a pickle naming the TensorDataset, the
tensor rebuild helper and typed storages) plus one raw little-endian file per storage. Only
those names are honoured (a restricted unpickler, like ``torch.load(weights_only=True)``), so a
partition can never run code, and every tensor view is bounds-checked against its storage before
numpy reads it. The old pre-1.6 non-zip format is refused with what to do instead.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Any

import numpy as np

from services.worker.errors import PartitionError

#: torch's typed storages (as pickled by torch.save) -> numpy dtypes.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


#: What this module raises: the file is not a torch archive of plain tensors; the message says why
#: (:func:`services.worker.data.load_partition` adds the file's name).
PtFileError = PartitionError


class _Storage:
    """One storage named by the pickle: its dtype and where its bytes are in the archive."""

    def __init__(self, dtype: type, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = np.dtype(dtype), key, numel


class TensorDatasetStandIn:
    """What ``torch.utils.data.TensorDataset`` unpickles to here: only its ``tensors``."""

    tensors: tuple[np.ndarray, ...] = ()

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("tensors"), tuple):
            raise PtFileError("a TensorDataset without a tuple of tensors")
        self.tensors = state["tensors"]


def _ordered_dict(*args: object) -> dict[Any, Any]:
    return dict(*args)  # type: ignore[call-overload]  # the rebuild helper's (empty) backward hooks


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._root = archive, root
        self._bytes: dict[str, bytes] = {}
        self._little = archive.read(f"{root}byteorder").decode().strip() != "big" \
            if f"{root}byteorder" in archive.namelist() else True

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        allowed = {("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
                   ("torch.utils.data.dataset", "TensorDataset"): TensorDatasetStandIn,
                   ("collections", "OrderedDict"): _ordered_dict}
        if (module, name) not in allowed:
            raise PtFileError(f"refused to load global {module}.{name}: a partition holds plain tensors only "
                              "(nothing in it was run)")
        return allowed[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], type)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise PtFileError(f"unexpected storage reference {pid!r:.80}")
        return _Storage(pid[1], pid[2], pid[4])

    def _rebuild_tensor(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                        *_: object) -> np.ndarray:
        if not isinstance(storage, _Storage):
            raise PtFileError("a tensor without a storage")
        raw = self._bytes.get(storage.key)
        if raw is None:
            raw = self._bytes[storage.key] = self._archive.read(f"{self._root}data/{storage.key}")
        if len(raw) < storage.numel * storage.dtype.itemsize:
            raise PtFileError(f"storage {storage.key} holds {len(raw)} bytes, fewer than its {storage.numel} values")
        if len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
            raise PtFileError(f"a tensor of size {size} and stride {stride} cannot be read")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else offset - 1
        if last >= storage.numel:
            raise PtFileError(f"a tensor of size {size} reads past its storage of {storage.numel} values")
        dtype = storage.dtype if self._little else storage.dtype.newbyteorder(">")
        flat = np.frombuffer(raw, dtype=dtype, count=storage.numel)
        view = np.lib.stride_tricks.as_strided(flat[offset:] if flat.size else flat, shape=size,
                                               strides=[s * dtype.itemsize for s in stride], writeable=False)
        return np.array(view, dtype=storage.dtype)  # a writable copy of its own, native byte order


def read_tensor_dataset(raw: bytes) -> tuple[np.ndarray, ...]:
    """The tensors of a pickled TensorDataset in a torch zip archive, as numpy arrays."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise PtFileError("not a torch zip archive (files saved by torch before 1.6 are not read here: "
                          "re-save it with a current torch, or as .npz)") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise PtFileError(f"a torch archive holds one data.pkl, this one {len(pickles)}")
        root = pickles[0][: -len("data.pkl")]
        try:
            loaded = _Unpickler(archive.read(pickles[0]), archive, root).load()
        except PtFileError:
            raise
        except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as exc:
            raise PtFileError(f"cannot be unpickled ({type(exc).__name__}: {exc})") from None
    if not isinstance(loaded, TensorDatasetStandIn):
        raise PtFileError(f"expected TensorDataset(images, magnitudes[, redshifts]), got {type(loaded).__name__}")
    if not all(isinstance(tensor, np.ndarray) for tensor in loaded.tensors):
        raise PtFileError("the TensorDataset holds something other than tensors")
    return loaded.tensors
