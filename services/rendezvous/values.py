"""Python values to frames and back: arrays and tensors as raw buffers, everything else pickled.

numpy and torch are imported only when a value needs them, so the communicator adds nothing to
an image that sends only plain Python objects.
"""

from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass
from typing import Any

from services.rendezvous.frames import Kind

Buffer = bytes | bytearray | memoryview


@dataclass
class Encoded:
    """One frame's worth of a value: its kind, metadata and payload buffers (not yet framed)."""

    kind: Kind
    metadata: bytes
    payload: list[Buffer]

    @property
    def payload_size(self) -> int:
        return sum(memoryview(part).nbytes for part in self.payload)


def _is_numpy(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def _is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _array_metadata(dtype: str, shape: tuple[int, ...]) -> bytes:
    return f"{dtype}|{','.join(map(str, shape))}".encode("ascii")


def _parse_array_metadata(metadata: bytes) -> tuple[str, tuple[int, ...]]:
    dtype, _, dims = metadata.decode("ascii").rpartition("|")  # dtypes like "|u1" contain the separator
    return dtype, tuple(int(d) for d in dims.split(",")) if dims else ()


def encode(value: Any) -> Encoded:
    """Frame contents for ``value`` without copying array data (non-contiguous arrays are copied once)."""
    if _is_numpy(value) and not value.dtype.hasobject:
        array = value if value.flags.c_contiguous else value.copy(order="C")  # keeps 0-d arrays 0-d
        return Encoded(Kind.ARRAY, _array_metadata(array.dtype.str, array.shape), [_raw(array)])
    if _is_torch(value):
        import torch

        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        raw = tensor.view(-1).view(torch.uint8).numpy() if tensor.numel() else b""
        return Encoded(Kind.TENSOR, _array_metadata(dtype, tuple(tensor.shape)), [memoryview(raw)])
    if isinstance(value, bytes | bytearray):
        return Encoded(Kind.BYTES, b"", [value])
    return Encoded(Kind.PICKLE, b"", [pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)])


def _raw(array: Any) -> memoryview:
    return memoryview(array.reshape(-1).view("u1")) if array.size else memoryview(b"")


def allocate(kind: Kind, metadata: bytes, size: int, into: Any = None) -> tuple[Any, memoryview]:
    """A buffer for an incoming payload, and the writable bytes to receive it into.

    Returns ``(holder, target)``: for arrays the holder is the array itself, received in place:
    ``into`` (a C-contiguous array of the announced dtype and shape) when the caller has one,
    else a fresh array.
    """
    if kind is Kind.ARRAY and into is not None:
        dtype, shape = _parse_array_metadata(metadata)
        if into.dtype.str != dtype or into.shape != shape or not into.flags.c_contiguous:
            raise ValueError(f"array {dtype}{list(shape)} does not fit the buffer {into.dtype.str}{list(into.shape)}")
        return into, _raw(into)
    if kind is Kind.ARRAY:
        import numpy

        dtype, shape = _parse_array_metadata(metadata)
        array = numpy.empty(shape, dtype=numpy.dtype(dtype))
        if array.nbytes != size:
            raise ValueError(f"array {dtype}{list(shape)} needs {array.nbytes} bytes, frame has {size}")
        return array, _raw(array)
    if kind is Kind.TENSOR:
        import torch

        dtype_name, shape = _parse_array_metadata(metadata)
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown tensor dtype {dtype_name!r}")
        tensor = torch.empty(shape, dtype=dtype)
        if tensor.numel() * tensor.element_size() != size:
            raise ValueError(f"tensor {dtype_name}{list(shape)} does not match a {size}-byte payload")
        target = memoryview(tensor.view(-1).view(torch.uint8).numpy()) if tensor.numel() else memoryview(b"")
        return tensor, target
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


def decode(kind: Kind, holder: Any) -> Any:
    """The value a completed frame carried."""
    if kind in (Kind.ARRAY, Kind.TENSOR):
        return holder
    if kind is Kind.BYTES:
        return bytes(holder)
    return pickle.loads(holder)
