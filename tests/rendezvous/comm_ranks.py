"""Rank-side scenarios of the communicator tests, run one process per rank.

Every rank builds the same deterministic inputs for every rank, so that each can check its own
results against a numpy reference computed locally. A scenario returns a JSON-able summary or
raises; :func:`run_rank` reports either through the queue.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from services.rendezvous import Communicator

DTYPES = ["float32", "float64", "int32", "int64"]
SHAPES = [(), (7,), (3, 5), (70_000,)]  # the last is 280+ KB as float32: the ring path


def data(rank: int, dtype: str, shape: tuple[int, ...], salt: int = 0) -> np.ndarray:
    rng = np.random.default_rng(1000 * rank + salt)
    return rng.integers(1, 5, size=shape).astype(dtype)


def all_collectives(comm: Communicator) -> dict[str, Any]:
    n, r = comm.world_size, comm.rank
    comm.barrier()
    checked = 0
    for salt, (dtype, shape) in enumerate((d, s) for d in DTYPES for s in SHAPES):
        mine = data(r, dtype, shape, salt)
        everyone = [data(k, dtype, shape, salt) for k in range(n)]
        for op, ref in (("sum", np.sum), ("prod", np.prod), ("min", np.min), ("max", np.max)):
            expected = ref(np.stack(everyone), axis=0)
            result = comm.allreduce(mine, op=op)
            np.testing.assert_array_equal(result, expected)
            assert result.dtype == mine.dtype and result.shape == mine.shape
            reduced = comm.reduce(mine, root=n - 1, op=op)
            if r == n - 1:
                np.testing.assert_array_equal(reduced, expected)
            else:
                assert reduced is None
            checked += 2
        prefix = comm.scan(mine, op="sum")
        np.testing.assert_array_equal(prefix, np.sum(np.stack(everyone[: r + 1]), axis=0))
        root = salt % n
        got = comm.bcast(mine if r == root else None, root=root)
        np.testing.assert_array_equal(got, everyone[root])
        gathered = comm.gather(mine, root=root)
        if r == root:
            for k in range(n):
                np.testing.assert_array_equal(gathered[k], everyone[k])
        np.testing.assert_array_equal(np.stack(comm.allgather(mine)), np.stack(everyone))
        part = comm.scatter([a * 2 for a in everyone] if r == root else None, root=root)
        np.testing.assert_array_equal(part, everyone[r] * 2)
        checked += 5
    assert comm.allreduce(r + 1) == n * (n + 1) // 2
    assert comm.allreduce(np.float64(r), op=lambda a, b: max(a, b)) == n - 1
    assert comm.gather({"rank": r, "name": f"r{r}"}, root=0) == ([{"rank": k, "name": f"r{k}"} for k in range(n)]
                                                                  if r == 0 else None)
    assert comm.scatter([{"k": k} for k in range(n)] if r == 0 else None, root=0) == {"k": r}
    if n > 1:
        comm.send({"from": r, "payload": np.arange(r + 3)}, (r + 1) % n)
        message = comm.recv((r - 1) % n)
        assert message["from"] == (r - 1) % n
        np.testing.assert_array_equal(message["payload"], np.arange((r - 1) % n + 3))
    return {"checked": checked}


def tensors(comm: Communicator) -> dict[str, Any]:
    import torch

    n, r = comm.world_size, comm.rank
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        mine = torch.full((4, 3), r + 1, dtype=dtype)
        total = comm.allreduce(mine)
        assert isinstance(total, torch.Tensor) and total.dtype == dtype
        assert torch.equal(total, torch.full((4, 3), n * (n + 1) // 2, dtype=dtype))
        got = comm.bcast(mine if r == 0 else None, root=0)
        assert torch.equal(got, torch.full((4, 3), 1, dtype=dtype))
    return {"ok": True}


def identify(comm: Communicator) -> dict[str, Any]:
    """Which job every rank's peers belong to: crossed links would mix job names."""
    job = os.environ["COMM_TEST_JOB"]
    seen = comm.allgather(job)
    total = comm.allreduce(np.full(100_000, comm.rank, dtype=np.float32))
    return {"seen": sorted(set(seen)), "total": float(total[0])}


def soak(comm: Communicator) -> dict[str, Any]:
    n, r = comm.world_size, comm.rank
    block = np.full(1 << 20, r + 1, dtype=np.float32)  # 4 MiB
    started = time.monotonic()
    for step in range(100):
        result = comm.allreduce(block * (step % 3 + 1))
        assert result[0] == (step % 3 + 1) * n * (n + 1) / 2 and result[-1] == result[0]
    huge = comm.allreduce(np.full(16 << 20, r + 1, dtype=np.float32))  # 64 MiB
    assert huge[0] == huge[-1] == n * (n + 1) / 2
    return {"seconds": round(time.monotonic() - started, 2)}


def killed(comm: Communicator) -> dict[str, Any]:
    comm.connect_all()
    comm.barrier()
    if comm.rank == 2:
        os._exit(17)  # dies without closing anything, as a crashed Lambda does
    started = time.monotonic()
    try:
        comm.allreduce(np.ones(10))
    except Exception as error:
        return {"error": type(error).__name__, "failed_rank": getattr(error, "failed_rank", None),
                "message": str(error), "seconds": round(time.monotonic() - started, 2)}
    return {"error": None}


def mismatched(comm: Communicator) -> dict[str, Any]:
    comm.barrier()
    started = time.monotonic()
    try:
        if comm.rank == 0:
            comm.bcast("x", root=0)
        else:
            comm.gather("y", root=0)
        comm.barrier()
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error),
                "seconds": round(time.monotonic() - started, 2)}
    return {"error": None}


def late_or_absent(comm: Communicator) -> dict[str, Any]:
    """Rank 1 arrives late (within the deadline); the last rank never comes."""
    if comm.rank == 1:
        time.sleep(1.0)
    started = time.monotonic()
    try:
        comm.allreduce(comm.rank)
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error), "peers": getattr(error, "peers", None),
                "seconds": round(time.monotonic() - started, 2)}
    return {"error": None}


def late_but_in_time(comm: Communicator) -> dict[str, Any]:
    time.sleep(0.5 * comm.rank)
    return {"sum": comm.allreduce(comm.rank)}


SCENARIOS: dict[str, Callable[[Communicator], dict[str, Any]]] = {
    f.__name__: f for f in (all_collectives, tensors, identify, soak, killed, mismatched, late_or_absent,
                            late_but_in_time)
}


def run_rank(scenario: str, rank: int, world_size: int, comm_name: str, port: int, timeout: float,
             results: Any, env: dict[str, str]) -> None:
    os.environ.update(env)
    try:
        with Communicator(rank, world_size, comm_name, "127.0.0.1", port, timeout=timeout) as comm:
            outcome: dict[str, Any] = {"ok": True, **SCENARIOS[scenario](comm)}
    except BaseException as error:
        outcome = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
    results.put((rank, outcome))
