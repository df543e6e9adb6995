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


def combine_into(op: str | Reducer, target: Any, other: Any) -> None:
    """``target[...] = op(target, other)`` for a numpy array, in place when the op allows it."""
    import numpy

    if isinstance(op, str):
        getattr(numpy, _NUMPY[op])(target, other, out=target)
    else:
        target[...] = op(target, other)
