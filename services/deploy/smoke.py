"""The smoke test of a deployment: the worker's ``selftest`` mode on two ranks at once.

Each rank writes, reads back and deletes an object under the results prefix (S3 and the role
work), then pairs with the other through the deployed rendezvous server and exchanges a greeting
(the server is reachable and hole punching works from Lambda). The address comes from the
Route 53 record the rendezvous task writes for itself: asking Route 53 sees a new task at once,
where a resolver might still cache the old address or the record's absence.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from services.contracts import WorkerEvent
from services.coordinator.invoker import Invoker
from services.deploy.errors import SmokeTestError

#: Under the worker role's writable prefix (infra/worker.yaml's ResultsPrefix default).
RESULTS_PREFIX = "results/cosmic-deploy-smoke"
PAIRING_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RankCheck:
    """What one rank found: its S3 round trip and the two ends of its link as it saw them."""

    rank: int
    s3_round_trip_ms: float
    local: str
    peer: str
    pair_ms: float
    billed_ms: float | None


def record_address(route53: Any, zone_id: str, name: str) -> str | None:
    """The A record's address in the hosted zone, or None while there is none."""
    wanted = name.rstrip(".").lower() + "."
    sets = route53.list_resource_record_sets(HostedZoneId=zone_id, StartRecordName=wanted, StartRecordType="A",
                                             MaxItems="1")["ResourceRecordSets"]
    for record in sets:
        if record["Name"].lower() == wanted and record["Type"] == "A" and record.get("ResourceRecords"):
            return str(record["ResourceRecords"][0]["Value"])
    return None


def wait_for_record(route53: Any, zone_id: str, name: str, timeout_s: float, poll_s: float,
                    progress: Callable[[str], None]) -> str:
    """Wait for the rendezvous task to register itself (it does so as it starts)."""
    deadline = time.monotonic() + timeout_s
    while (address := record_address(route53, zone_id, name)) is None:
        if time.monotonic() > deadline:
            raise SmokeTestError(f"no A record {name} in zone {zone_id} after {timeout_s:.0f} s: did the rendezvous "
                                 "task start? Its register container's log says why it could not write the record")
        progress(f"waiting for the rendezvous task to register {name}")
        time.sleep(poll_s)
    return address


def selftest_events(function_timeout_s: float, bucket: str, rendezvous: str) -> list[dict[str, Any]]:
    """Two ranks' ``selftest`` events under a fresh job id and a secret communicator name."""
    job_id = f"deploy-smoke-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    comm_name = secrets.token_hex(16)
    timeout = min(PAIRING_TIMEOUT_S, max(1.0, function_timeout_s - 5))
    return [WorkerEvent(job_id=job_id, rank=rank, world_size=2, data_bucket=bucket, partitions=(), result_bucket=bucket,
                        result_path=f"{RESULTS_PREFIX}/{job_id}", mode="selftest", rendezvous=rendezvous,
                        comm_name=comm_name, collective_timeout_s=timeout).to_dict() for rank in (0, 1)]


#: Seconds the smoke test's invocations may wait out throttling before the step fails naming it.
THROTTLE_WAIT_S = 60.0


def run(function: str, function_timeout_s: float, bucket: str, rendezvous: str) -> list[RankCheck]:
    """Invoke both ranks together (they wait for each other) and check what each reports."""
    invoker = Invoker(function, function_timeout_s, pool_size=2, retries=4)
    events = selftest_events(function_timeout_s, bucket, rendezvous)
    deadline = time.monotonic() + THROTTLE_WAIT_S  # a throttled invoke waits, but a smoke test not for an hour
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(lambda event: invoker.invoke(event, deadline=deadline), events))
    checks = []
    for rank, outcome in enumerate(outcomes):
        if not outcome.ok or outcome.response is None:
            raise SmokeTestError(f"rank {rank} of {function}: {outcome.error}", rank=rank)
        found = outcome.response.get("checks") or {}
        pairing = found.get("pairing") or {}
        expected = f"hello from rank {rank ^ 1}"
        if pairing.get("received") != expected:
            raise SmokeTestError(f"rank {rank} did not hear its partner through {rendezvous}: {pairing or found}",
                                 rank=rank)
        checks.append(RankCheck(rank, float(found["s3"]["round_trip_ms"]), pairing["local"], pairing["peer"],
                                float(pairing["pair_ms"]), outcome.report.get("billed_duration_ms")))
    return checks
