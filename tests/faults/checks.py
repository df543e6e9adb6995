"""What every fault case asserts about how its job ended: the terminal state, the exact set of
result objects (none lost, none duplicated, none from a superseded attempt), the attempts and the
cost counted (``GET /jobs/{id}`` and ``summary.json``) against the invocations the sandboxes saw."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from services.keys import commit_key
from tests.common import Api
from tests.faults.conftest import FaultStack

#: Lambda's request price (USD per million), as the coordinator's price table has it.
REQUEST_PRICE = 0.20


def rank_objects(ranks: list[int] | set[int], labels: bool = True) -> set[str]:
    """The objects a successful rank writes under the result path."""
    return {name for rank in ranks for name in
            (f"{rank}.json", f"predictions/{rank}.npy", *([f"labels/{rank}.npy"] if labels else []))}


def job_objects(ranks: list[int] | set[int], *, collective: bool = False, markers: tuple[str, ...] = (),
                job_id: str = "") -> set[str]:
    """Every object a finished job leaves under its result path: its ranks', the coordinator's
    summary and combined data, rank 0's collective summary, and the control markers written."""
    return (rank_objects(ranks) | {"summary.json", "combined_data.json"}
            | ({"summary_collective.json"} if collective else set())
            | {f"_control/{job_id}/{marker}.json" for marker in markers})


def finished(api: Api, stack: FaultStack, job_id: str, result_path: str, *, state: str,
             winners: dict[int, int], invoked: dict[int, int], objects: set[str]) -> dict[str, Any]:
    """Assert how the job ended; returns its ``summary.json``.

    ``winners``: rank -> the attempt whose results the rank keeps (its result document says so);
    ``invoked``: rank -> how many invocations of it reached a sandbox (the fault handler's count),
    which is also what the job must count as its attempts and bill.
    """
    status, final = api.call("GET", f"/jobs/{job_id}")
    assert status == 200 and final["state"] == state, final
    assert stack.result_objects(result_path) == objects, "lost, duplicated or stray result objects"
    seen = Counter(rank for rank, _ in stack.invocations(job_id))
    assert dict(seen) == {rank: count for rank, count in invoked.items() if count}, \
        f"invocations per rank: {dict(seen)}, expected {invoked}"
    for rank, attempt in winners.items():
        document = json.loads(stack.store.get(stack.bucket, f"{result_path}/{rank}.json").data)
        assert (document["job_id"], document["attempt"], document["status"]) == (job_id, attempt, "succeeded"), \
            f"rank {rank}'s result is not attempt {attempt}'s: {document['attempt']}"
        (kept,) = [a for a in final["ranks"][rank]["attempts"] if a["state"] == "succeeded"]
        assert kept["attempt"] == attempt, final["ranks"][rank]
        claim = json.loads(stack.store.get(stack.bucket, commit_key(result_path, job_id, rank)).data)
        assert claim["attempt"] == attempt, f"rank {rank}'s commit claim names attempt {claim['attempt']}"
    counted = Counter({rank["rank"]: len(rank["attempts"]) for rank in final["ranks"]})
    assert +counted == +Counter(invoked), f"attempts shown per rank {dict(counted)}, invoked {invoked}"
    summary = json.loads(stack.store.get(stack.bucket, f"{result_path}/summary.json").data)
    attempts = sum(invoked.values())
    assert summary["state"] == state and summary["invocations"]["attempts"] == attempts, summary["invocations"]
    assert math.isclose(summary["cost"]["lambda_requests"], attempts * REQUEST_PRICE / 1e6), summary["cost"]
    billed_ms = [math.ceil(a["duration_ms"]) for rank in final["ranks"] for a in rank["attempts"]
                 if a["duration_ms"] is not None]
    assert len(billed_ms) == attempts, "every attempt billed, from its REPORT or the worker's own timings"
    memory_gb = (summary["configured_memory_mb"] or 0) / 1024  # None when nothing ran
    assert math.isclose(summary["gb_seconds"], sum(billed_ms) / 1000 * memory_gb, rel_tol=1e-3, abs_tol=0.01), \
        (summary["gb_seconds"], billed_ms)
    return summary
