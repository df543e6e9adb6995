"""Jobs that always end right: they queue for their function's capacity instead of failing, a
throttled invocation waits (bounded by the job's deadline) instead of spending attempts, and the
communicator never decides a job's fate. Real S3, runtime (4 sandboxes), worker and rendezvous."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from tests.common import lambda_client
from tests.coordinator.conftest import PARTITIONS, SANDBOXES, Api, Servers


def test_the_users_payload_wider_than_the_capacity_runs_with_the_communicator_off(api: Api, stack: Servers) -> None:
    """``file_limit`` as a string and no ``world_size``: one rank per partition, more than the sandboxes."""
    payload = stack.payload(file_limit=str(PARTITIONS))
    assert "world_size" not in payload and PARTITIONS > SANDBOXES
    status, body = api.call("POST", "/jobs", payload)
    assert status == 202, body
    warned = [w for w in body["warnings"] if "communicator off" in w]
    assert warned and f"all {PARTITIONS} ranks" in warned[0] and f"at most {SANDBOXES}" in warned[0], body
    final = api.wait(body["job_id"], timeout=180)
    assert final["state"] == "succeeded" and final["world_size"] == PARTITIONS, final
    assert final["communicator"] is False
    attempts = [rank["attempts"] for rank in final["ranks"]]
    assert all(len(tried) == 1 and tried[0]["state"] == "succeeded" for tried in attempts), \
        "no attempt is spent on throttling"
    status, report = api.call("GET", f"/jobs/{body['job_id']}/report?format=md")
    assert status == 200 and "## Warnings" in report.decode() and "communicator off" in report.decode()


def test_asking_for_the_communicator_beyond_the_capacity_is_422_naming_both_numbers(api: Api, stack: Servers) -> None:
    status, body = api.call("POST", "/jobs", stack.payload(file_limit=str(PARTITIONS), communicator=True))
    assert status == 422, body
    detail = json.dumps(body["detail"])
    assert "communicator" in detail and f"all {PARTITIONS} ranks" in detail and f"at most {SANDBOXES}" in detail, body


def test_jobs_competing_for_capacity_queue_in_order_and_then_succeed(api: Api, stack: Servers) -> None:
    """A job holding every sandbox, then two one-rank jobs: they wait their turn, in order, and succeed."""
    holder = api.submit(stack.payload(result_path=f"results/slow-{secrets.token_hex(3)}", file_limit=str(SANDBOXES),
                                      world_size=SANDBOXES, communicator=False))
    waiting = [api.submit(stack.payload(world_size=1, communicator=False)) for _ in range(2)]
    seen: dict[str, set[Any]] = {job: set() for job in waiting}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = {job: api.call("GET", f"/jobs/{job}")[1] for job in waiting}
        for job, status in states.items():
            seen[job].add((status["state"], status.get("queue_position")))
        if all(status["state"] not in ("queued",) for status in states.values()):
            break
        time.sleep(0.05)
    assert ("queued", 1) in seen[waiting[0]], seen
    assert ("queued", 2) in seen[waiting[1]], seen
    for job in [holder, *waiting]:
        final = api.wait(job, timeout=120)
        assert final["state"] == "succeeded", final
        assert all(len(rank["attempts"]) == 1 for rank in final["ranks"]), final["ranks"]


def test_a_throttle_wait_ends_at_the_job_deadline(start_coordinator, stack: Servers) -> None:
    """Someone else holds every sandbox: the rank waits as ``throttled`` and the job fails at its deadline."""
    api = start_coordinator(COSMIC_COORDINATOR_JOB_DEADLINE_S="4")
    with _every_sandbox_held(lambda_client(stack.lambda_endpoint), 12.0):
        submitted = time.monotonic()
        job_id = api.submit(stack.payload(world_size=1, communicator=False))
        attempt_states = set()
        while (status := api.call("GET", f"/jobs/{job_id}")[1])["state"] not in ("succeeded", "failed", "cancelled"):
            attempt_states |= {a["state"] for rank in status["ranks"] for a in rank["attempts"]}
            assert time.monotonic() - submitted < 60, status
            time.sleep(0.05)
        ended = time.monotonic() - submitted  # (the summary and S3 writes come after the deadline, so a margin)
    assert "throttled" in attempt_states, attempt_states
    assert status["state"] == "failed" and "COSMIC_COORDINATOR_JOB_DEADLINE_S = 4 s" in (status["error"] or ""), status
    tried = status["ranks"][0]["attempts"]
    assert len(tried) == 1 and "throttled" in tried[0]["error"] and "deadline" in tried[0]["error"], tried
    assert tried[0]["throttled_s"] > 2, tried
    waited = tried[0]["ended_at"] - status["submitted_at"]
    assert waited < 4 + 2, f"the throttled attempt ended {waited:.1f} s after submission, past the 4 s deadline"
    assert ended < 30


def test_a_throttled_rank_waits_and_succeeds_on_its_first_attempt(api: Api, stack: Servers) -> None:
    """Capacity the coordinator cannot see is taken: the rank is throttled, waits, then runs (it
    replaces a test that made the coordinator throttle itself, which its queue now prevents)."""
    with _every_sandbox_held(lambda_client(stack.lambda_endpoint), 3.0):
        job_id = api.submit(stack.payload(world_size=1, communicator=False, max_attempts=1))
        final = api.wait(job_id, timeout=120)
    assert final["state"] == "succeeded", final
    (attempt,) = final["ranks"][0]["attempts"]
    assert attempt["state"] == "succeeded" and attempt["throttled_s"] > 0, attempt
    status, metrics = api.call("GET", "/metrics")
    throttles = float(next(line.split()[1] for line in metrics.decode().splitlines()
                           if line.startswith("cosmic_invoke_throttles_total")))
    assert status == 200 and throttles > 0


@contextlib.contextmanager
def _every_sandbox_held(lam: Any, seconds: float) -> Iterator[None]:
    """Capacity the coordinator cannot see taken: every sandbox held for ``seconds`` by others."""
    holders = [threading.Thread(target=_hold, args=(lam, seconds)) for _ in range(SANDBOXES)]
    for thread in holders:
        thread.start()
    try:
        _wait_until_full(lam)
        yield
    finally:
        for thread in holders:
            thread.join(30)


def _hold(lam: Any, seconds: float) -> None:
    """Hold a sandbox for ``seconds`` (trying again while the probe below has it)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            lam.invoke(FunctionName="cosmic-worker", Payload=json.dumps({"hold_s": seconds}))["Payload"].read()
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TooManyRequestsException" or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _wait_until_full(lam: Any) -> None:
    """Until the runtime answers 429: every sandbox is held."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            lam.invoke(FunctionName="cosmic-worker", Payload=json.dumps({"hold_s": 0}))["Payload"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TooManyRequestsException":
                return
            raise
        time.sleep(0.05)
    raise AssertionError("the holding invocations never filled the runtime's sandboxes")
