"""``selftest`` mode: the smoke test of a deployment, without a model or data.

It proves the two things a worker needs from its environment: S3 (write, read back, delete an
object under the job's result path) and, given a rendezvous endpoint, a punched link to its
partner rank (``rank ^ 1``), over which the two exchange a few bytes and report the addresses
each saw: through NATs those are the public addresses the rendezvous server handed out.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from services.contracts import WorkerEvent, WorkerResult, split_endpoint
from services.s3store import S3Store


def check_s3(job: WorkerEvent, store: S3Store) -> dict[str, Any]:
    key = f"{job.result_path}/selftest/{job.rank}.json"
    payload = json.dumps({"rank": job.rank, "job_id": job.job_id, "nonce": os.urandom(8).hex()}).encode()
    started = time.perf_counter()
    store.put(job.result_bucket, key, payload, "application/json")
    echoed = store.get(job.result_bucket, key).data
    store.delete(job.result_bucket, key)
    if echoed != payload:
        raise RuntimeError(f"S3 returned different bytes for s3://{job.result_bucket}/{key}")
    return {"bucket": job.result_bucket, "key": key, "round_trip_ms": round((time.perf_counter() - started) * 1e3, 1)}


def check_pairing(job: WorkerEvent) -> dict[str, Any]:
    from services.rendezvous.client import pair  # lazily: only a selftest with a rendezvous needs it
    from services.rendezvous.comm import link_name
    from services.rendezvous.netio import recv_exactly

    assert job.rendezvous and job.comm_name
    partner = job.rank ^ 1
    if partner >= job.world_size:
        return {"skipped": f"rank {job.rank} has no partner in a world of {job.world_size}"}
    host, port = split_endpoint(job.rendezvous)
    started = time.perf_counter()
    link = pair(link_name(job.comm_name + ".selftest", job.rank, partner), host, port,
                timeout=job.collective_timeout_s)
    with link:
        paired_ms = (time.perf_counter() - started) * 1e3
        hello = f"hello from rank {job.rank}".encode().ljust(32)
        link.sendall(hello)
        received = recv_exactly(link, len(hello))
        local, peer = link.getsockname(), link.getpeername()
        return {"partner": partner, "local": f"{local[0]}:{local[1]}", "peer": f"{peer[0]}:{peer[1]}",
                "pair_ms": round(paired_ms, 1),
                "received": received.decode(errors="replace").strip()}


def run_selftest(job: WorkerEvent, store: S3Store) -> WorkerResult:
    checks: dict[str, Any] = {"s3": check_s3(job, store)}
    if job.rendezvous is not None:
        checks["pairing"] = check_pairing(job)
    return WorkerResult(job_id=job.job_id, rank=job.rank, attempt=job.attempt, status="succeeded", checks=checks)
