"""Collective algorithms over a :class:`~services.rendezvous.comm.Communicator`'s links.

Chosen for the message size, as MPI libraries do:

* bcast, reduce, gather, scatter: binomial trees (log2 n rounds, each rank talks to its parent
  once and to each child once);
* barrier: dissemination (log2 n rounds of empty messages, any n);
* allreduce: recursive doubling for small values (log2 n rounds; ranks beyond the largest power
  of two fold into a partner first, so any n works), and for arrays of at least
  ``RING_MIN_BYTES`` a ring reduce-scatter then allgather, which sends 2(n-1)/n of the array per
  rank instead of log2 n whole copies, and receives straight into the result;
* allgather: gather to rank 0, then bcast; scan: Hillis-Steele (log2 n rounds).

Every step is one :func:`~services.rendezvous.transfer.exchange`, so a rank sends and receives
at once and no pair of ranks can deadlock on full socket buffers.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from services.rendezvous.frames import Op
from services.rendezvous.reduction import Reducer, combine_into, combine_received, resolve
from services.rendezvous.transfer import Items

if TYPE_CHECKING:
    from services.rendezvous.comm import Communicator

#: Arrays at least this large (bytes) are allreduced around a ring (at 2 ranks too: each rank
#: then moves and adds half the array instead of all of it).
RING_MIN_BYTES = 256 * 1024


def barrier(comm: Communicator, deadline: float) -> None:
    n, r, distance = comm.world_size, comm.rank, 1
    while distance < n:
        comm._exchange(Op.BARRIER, {(r + distance) % n: b""}, [(r - distance) % n], deadline)
        distance *= 2


def _tree_parent(vrank: int, n: int) -> tuple[int | None, int]:
    """Parent of a relative rank in the binomial tree, and the mask below which its children lie."""
    mask = 1
    while mask < n:
        if vrank & mask:
            return vrank - mask, mask
        mask <<= 1
    return None, mask


def _tree_children(vrank: int, below: int, n: int) -> list[int]:
    children, mask = [], below >> 1
    while mask:
        if vrank + mask < n:
            children.append(vrank + mask)
        mask >>= 1
    return children


def bcast(comm: Communicator, obj: Any, root: int, deadline: float, op: Op = Op.BCAST) -> Any:
    n = comm.world_size
    vrank = (comm.rank - root) % n
    parent, below = _tree_parent(vrank, n)
    if parent is not None:
        source = (parent + root) % n
        obj = comm._exchange(op, {}, [source], deadline)[source]
    children = [(child + root) % n for child in _tree_children(vrank, below, n)]
    if children:
        comm._exchange(op, dict.fromkeys(children, obj), [], deadline)
    return obj


def reduce(comm: Communicator, x: Any, root: int, op: str | Reducer, deadline: float) -> Any:
    resolve(op)  # refuse an unknown operator before any message moves
    n = comm.world_size
    vrank = (comm.rank - root) % n
    mine, mask = x, 1
    while mask < n:
        if vrank & mask:
            comm._exchange(Op.REDUCE, {(vrank - mask + root) % n: x}, [], deadline)
            return None
        child = vrank + mask
        if child < n:
            source = (child + root) % n
            x = combine_received(op, comm._exchange(Op.REDUCE, {}, [source], deadline)[source], x, False)
        mask <<= 1
    return _copy(x) if x is mine else x  # the result never aliases the caller's input


def gather(comm: Communicator, obj: Any, root: int, deadline: float, op: Op = Op.GATHER) -> list[Any] | None:
    n = comm.world_size
    vrank = (comm.rank - root) % n
    ranks, values = [comm.rank], [obj]
    mask = 1
    while mask < n:
        if vrank & mask:
            comm._exchange(op, {(vrank - mask + root) % n: Items([ranks, *values])}, [], deadline)
            return None
        child = vrank + mask
        if child < n:
            source = (child + root) % n
            subtree = comm._exchange(op, {}, [source], deadline)[source]
            ranks += subtree[0]
            values += subtree[1:]
        mask <<= 1
    ordered: list[Any] = [None] * n
    for rank, value in zip(ranks, values, strict=True):
        ordered[rank] = value
    return ordered


def allgather(comm: Communicator, obj: Any, deadline: float) -> list[Any]:
    gathered = gather(comm, obj, 0, deadline, op=Op.ALLGATHER)
    return list(bcast(comm, Items(gathered or []), 0, deadline, op=Op.ALLGATHER))


def scatter(comm: Communicator, objs: list[Any] | None, root: int, deadline: float) -> Any:
    n = comm.world_size
    vrank = (comm.rank - root) % n
    parent, below = _tree_parent(vrank, n)
    if parent is None:
        # by relative rank: mine[v] is for rank (v + root) % n
        mine = [objs[(v + root) % n] for v in range(n)]  # type: ignore[index]
    else:
        source = (parent + root) % n
        mine = list(comm._exchange(Op.SCATTER, {}, [source], deadline)[source])
    # mine covers relative ranks vrank .. vrank + len(mine) - 1
    sends = {}
    for child in _tree_children(vrank, below, n):
        start = child - vrank
        span = min(child + (child & -child), n) - child
        sends[(child + root) % n] = Items(mine[start:start + span])
    if sends:
        comm._exchange(Op.SCATTER, sends, [], deadline)
    return mine[0]


def allreduce(comm: Communicator, x: Any, op: str | Reducer, deadline: float) -> Any:
    if comm.world_size == 1:
        return _copy(x)
    numpy = sys.modules.get("numpy")
    if (numpy is not None and isinstance(x, numpy.ndarray)
            and x.nbytes >= RING_MIN_BYTES and x.size >= comm.world_size):
        return _ring_allreduce(comm, x, op, deadline)
    resolve(op)
    return _recursive_doubling(comm, x, op, deadline)


def _recursive_doubling(comm: Communicator, x: Any, op: str | Reducer, deadline: float) -> Any:
    n, r = comm.world_size, comm.rank
    power = 1 << (n.bit_length() - 1)
    extra = n - power
    # ranks 0..2*extra-1 fold in pairs: the even one hands its value to the odd one and waits
    if r < 2 * extra:
        if r % 2 == 0:
            comm._exchange(Op.ALLREDUCE, {r + 1: x}, [], deadline)
            return comm._exchange(Op.ALLREDUCE, {}, [r + 1], deadline)[r + 1]
        x = combine_received(op, comm._exchange(Op.ALLREDUCE, {}, [r - 1], deadline)[r - 1], x, True)
        vrank = r // 2
    else:
        vrank = r - extra
    mask = 1
    while mask < power:
        vpeer = vrank ^ mask
        peer = vpeer * 2 + 1 if vpeer < extra else vpeer + extra
        theirs = comm._exchange(Op.ALLREDUCE, {peer: x}, [peer], deadline)[peer]
        x = combine_received(op, theirs, x, peer < r)
        mask <<= 1
    if r < 2 * extra:
        comm._exchange(Op.ALLREDUCE, {r - 1: x}, [], deadline)
    return x


def _ring_allreduce(comm: Communicator, x: Any, op: str | Reducer, deadline: float) -> Any:
    import numpy

    n, r = comm.world_size, comm.rank
    right, left = (r + 1) % n, (r - 1) % n
    flat = numpy.array(x, copy=True).reshape(-1)
    bounds = numpy.linspace(0, flat.size, n + 1).astype(int)
    chunk = [flat[bounds[i]:bounds[i + 1]] for i in range(n)]
    scratch = numpy.empty(max(c.size for c in chunk), dtype=flat.dtype)
    for step in range(n - 1):  # reduce-scatter: chunk (r+1) % n ends complete on rank r
        out, into = (r - step) % n, (r - step - 1) % n
        landing = scratch[:chunk[into].size]
        comm._exchange(Op.ALLREDUCE, {right: chunk[out]}, [left], deadline, into={left: landing})
        combine_into(op, chunk[into], landing)
    for step in range(n - 1):  # allgather: complete chunks land straight in the result
        out, into = (r - step + 1) % n, (r - step) % n
        comm._exchange(Op.ALLREDUCE, {right: chunk[out]}, [left], deadline, into={left: chunk[into]})
    return flat.reshape(numpy.shape(x))


def scan(comm: Communicator, x: Any, op: str | Reducer, deadline: float) -> Any:
    resolve(op)
    n, r, distance = comm.world_size, comm.rank, 1
    x = _copy(x)
    while distance < n:
        sends = {r + distance: x} if r + distance < n else {}
        receives = [r - distance] if r >= distance else []
        got = comm._exchange(Op.SCAN, sends, receives, deadline)
        if receives:
            x = combine_received(op, got[r - distance], x, True)
        distance *= 2
    return x


def _copy(x: Any) -> Any:
    """A result that does not alias the caller's input (arrays and tensors are copied)."""
    clone = getattr(x, "clone", None) or getattr(x, "copy", None)
    return clone() if callable(clone) and not isinstance(x, dict | list | set) else x
