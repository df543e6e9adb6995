"""Reduction operators for reduce, allreduce and scan, on numpy arrays, torch tensors and scalars.

``op`` is ``"sum"``, ``"prod"``, ``"min"``, ``"max"`` or a callable ``f(a, b)``. Operators must be
associative and commutative (as MPI's predefined ones are): the order in which partial results
meet depends on the algorithm. Named operators never modify their inputs.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

Reducer = Callable[[Any, Any], Any]

_SCALAR = {"sum": operator.add, "prod": operator.mul, "min": min, "max": max}
_NUMPY = {"sum": "add", "prod": "multiply", "min": "minimum", "max": "maximum"}
_TORCH = {"sum": "add", "prod": "mul", "min": "minimum", "max": "maximum"}


def resolve(op: str | Reducer) -> Reducer:
    """A two-argument function for ``op``; raises ValueError for an unknown name."""
    if callable(op):
        return op
    if op not in _SCALAR:
        raise ValueError(f"unknown reduction {op!r}: use sum, prod, min, max or a callable")

    def combine(a: Any, b: Any) -> Any:
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(a, numpy.ndarray):
            return getattr(numpy, _NUMPY[op])(a, b)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(a, torch.Tensor):
            return getattr(torch, _TORCH[op])(a, b)
        return _SCALAR[op](a, b)

    combine.__name__ = f"reduce_{op}"
    return combine


def combine_received(op: str | Reducer, received: Any, mine: Any, received_first: bool) -> Any:
    """``op`` of a value just received (which the caller owns) and this rank's value.

    For named operators on arrays of one dtype and shape the result is written into ``received``,
    saving a fresh array per step (a 4 MiB allocation costs ~1,000 page faults). Named operators
    give the same result in either order, so ``received_first`` matters only for callables.
    """
    if isinstance(op, str):
        numpy = sys.modules.get("numpy")
        if (numpy is not None and isinstance(received, numpy.ndarray) and isinstance(mine, numpy.ndarray)
                and received.shape == mine.shape and received.dtype == mine.dtype and received.ndim
                and received.flags.writeable):
            getattr(numpy, _NUMPY[op])(received, mine, out=received)
            return received
    combine = resolve(op)
    return combine(received, mine) if received_first else combine(mine, received)


def combine_into(op: str | Reducer, target: Any, other: Any) -> None:
    """``target[...] = op(target, other)`` for a numpy array, in place when the op allows it."""
    import numpy

    if isinstance(op, str):
        getattr(numpy, _NUMPY[op])(target, other, out=target)
    else:
        target[...] = op(target, other)
