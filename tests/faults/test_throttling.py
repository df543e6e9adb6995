"""Capacity taken: more ranks than sandboxes (the communicator then off), sandboxes held by someone
else (with and without the communicator), and two jobs competing for the function. A 429 never
spends an attempt: ranks wait, jobs queue in order, the job's deadline bounds every wait."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from tests.common import Api, lambda_client
from tests.faults.checks import finished, job_objects
from tests.faults.conftest import PARTITIONS, SANDBOXES, FaultStack

ALL = list(range(PARTITIONS))


def test_the_users_payload_wider_than_the_capacity_runs_with_the_communicator_off(api: Api, stack: FaultStack) -> None:
    """``file_limit`` as a string and no ``world_size``: one rank per partition, more than the sandboxes."""
    payload = stack.payload(file_limit=str(PARTITIONS))
    assert "world_size" not in payload and PARTITIONS > SANDBOXES
    started = time.monotonic()
    status, body = api.call("POST", "/jobs", payload)
    assert status == 202, body
    warned = [w for w in body["warnings"] if "communicator off" in w]
    assert warned and f"all {PARTITIONS} ranks" in warned[0] and f"at most {SANDBOXES}" in warned[0], body
    final = api.wait(body["job_id"], timeout=120)
    assert final["world_size"] == PARTITIONS and final["communicator"] is False, final
    finished(api, stack, body["job_id"], payload["result_path"], state="succeeded", winners=dict.fromkeys(ALL, 1),
             invoked=dict.fromkeys(ALL, 1), objects=job_objects(ALL))  # no attempt spent on throttling
    assert time.monotonic() - started < 60
    status, report = api.call("GET", f"/jobs/{body['job_id']}/report?format=md")
    assert status == 200 and "## Warnings" in report.decode() and "communicator off" in report.decode()


def test_jobs_competing_for_capacity_queue_in_order_and_then_succeed(api: Api, stack: FaultStack) -> None:
    """A job holding every sandbox, then two one-rank jobs: they wait their turn, in order, and succeed."""
    holding = stack.payload(file_limit=str(SANDBOXES), world_size=SANDBOXES, communicator=False)
    stack.direct(holding["result_path"], hold_s=3.0)
    holder = api.submit(holding)
    stack.wait_phase(holder, "invoked")
    payloads = [stack.payload(world_size=1, communicator=False) for _ in range(2)]
    waiting = []
    for payload in payloads:  # one after the other: a job enters the queue from its own thread, after the 202
        waiting.append(api.submit(payload))
        _wait_state(api, waiting[-1], "queued")
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
    for job, payload in zip([holder, *waiting], [holding, *payloads], strict=True):
        ranks = list(range(payload["world_size"]))
        api.wait(job, timeout=120)
        finished(api, stack, job, payload["result_path"], state="succeeded", winners=dict.fromkeys(ranks, 1),
                 invoked=dict.fromkeys(ranks, 1), objects=job_objects(ranks))


def _wait_state(api: Api, job_id: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while api.call("GET", f"/jobs/{job_id}")[1]["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} never {state}"
        time.sleep(0.02)


def test_a_throttle_wait_ends_at_the_job_deadline(start_coordinator, stack: FaultStack) -> None:
    """Someone else holds every sandbox: the rank waits as ``throttled`` and the job fails at its deadline."""
    api = start_coordinator(COSMIC_COORDINATOR_JOB_DEADLINE_S="4")
    payload = stack.payload(world_size=1, communicator=False)
    with _every_sandbox_held(lambda_client(stack.lambda_endpoint), 12.0):
        submitted = time.monotonic()
        job_id = api.submit(payload)
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
    assert stack.invocations(job_id) == [], "a throttled call never reached a sandbox"
    assert stack.result_objects(payload["result_path"]) == {"summary.json", "combined_data.json"}
    summary = json.loads(stack.store.get(stack.bucket, f"{payload['result_path']}/summary.json").data)
    assert summary["state"] == "failed" and summary["invocations"]["attempts"] == 0, summary["invocations"]


def test_a_throttled_rank_waits_and_succeeds_on_its_first_attempt(api: Api, stack: FaultStack) -> None:
    """Capacity the coordinator cannot see is taken: the rank is throttled, waits, then runs once."""
    payload = stack.payload(world_size=1, communicator=False, max_attempts=1)
    with _every_sandbox_held(lambda_client(stack.lambda_endpoint), 3.0):
        started = time.monotonic()
        job_id = api.submit(payload)
        api.wait(job_id, timeout=120)
    finished(api, stack, job_id, payload["result_path"], state="succeeded", winners={0: 1}, invoked={0: 1},
             objects=job_objects([0]))
    (attempt,) = api.call("GET", f"/jobs/{job_id}")[1]["ranks"][0]["attempts"]
    assert attempt["throttled_s"] > 0, attempt
    assert time.monotonic() - started < 3.0 + 20
    status, metrics = api.call("GET", "/metrics")
    throttles = float(next(line.split()[1] for line in metrics.decode().splitlines()
                           if line.startswith("cosmic_invoke_throttles_total")))
    assert status == 200 and throttles > 0


def test_throttled_ranks_with_the_communicator_all_wait_then_meet(api: Api, stack: FaultStack) -> None:
    """The communicator's ranks must all run at once: throttled, they wait together, then agree."""
    payload = stack.payload(file_limit=str(SANDBOXES), world_size=SANDBOXES, communicator=True)
    ranks = list(range(SANDBOXES))
    with _every_sandbox_held(lambda_client(stack.lambda_endpoint), 3.0):
        started = time.monotonic()
        job_id = api.submit(payload)
        api.wait(job_id, timeout=120)
    finished(api, stack, job_id, payload["result_path"], state="succeeded", winners=dict.fromkeys(ranks, 1),
             invoked=dict.fromkeys(ranks, 1), objects=job_objects(ranks, collective=True))
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["collective"]["status"] == "agreed", report["collective"]
    ranks_shown = api.call("GET", f"/jobs/{job_id}")[1]["ranks"]
    assert all(rank["attempts"][0]["throttled_s"] > 0 for rank in ranks_shown), "every rank waited for capacity"
    assert time.monotonic() - started < 3.0 + 30


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
