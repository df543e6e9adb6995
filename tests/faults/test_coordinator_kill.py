"""The coordinator killed with SIGKILL at submit, mid-fan-out and mid-summary, then started again.

The contract a restarted coordinator keeps: a rank that finished is never run again, and an
attempt that was in flight when the coordinator died is not invoked again either: the new
coordinator waits for that orphan's own result in S3 (same job, same attempt) until the
attempt's deadline and counts it, its cost from the worker's own timings. So every rank is
invoked exactly once in all, and the summary counts and bills every attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.common import Api
from tests.faults.checks import finished, job_objects
from tests.faults.conftest import PARTITIONS, SANDBOXES, WORKER_TIMEOUT_S, FaultStack

ALL = list(range(PARTITIONS))
#: Seconds each rank holds its sandbox before working: in flight at the kill, still running at the restart.
HOLD_S = 8.0


def _job(stack: FaultStack, **directives: object) -> dict[str, object]:
    payload = stack.payload(file_limit=str(PARTITIONS), world_size=PARTITIONS, communicator=False)
    if directives:
        stack.direct(str(payload["result_path"]), **directives)
    return payload


def test_killed_at_submit_leaves_nothing_behind_and_the_retried_submit_runs_once(
        start_coordinator: Callable[..., Api], stack: FaultStack) -> None:
    """S3 frozen, so the kill lands while the coordinator is inside ``POST /jobs``: the client gets
    no answer, and its retry (same Idempotency-Key) on the restarted coordinator is one job, run once."""
    api = start_coordinator()
    payload = _job(stack)
    answers: list[object] = []
    with stack.s3_frozen():
        poster = threading.Thread(target=lambda: answers.append(_post(api, payload)), daemon=True)
        poster.start()
        time.sleep(1.0)  # the request is in, blocked on S3
        api.kill()
        poster.join(30)
    assert answers and not isinstance(answers[0], tuple), f"the killed coordinator answered: {answers}"
    assert stack.result_objects(str(payload["result_path"])) == set()
    started = time.monotonic()
    restarted = start_coordinator()
    status, body = _post(restarted, payload)
    assert status == 202, f"the half-submitted job still holds its result path: {body}"
    job_id = body["job_id"]
    restarted.wait(job_id, timeout=120)
    finished(restarted, stack, job_id, str(payload["result_path"]), state="succeeded",
             winners=dict.fromkeys(ALL, 1), invoked=dict.fromkeys(ALL, 1),
             objects=job_objects(ALL))
    assert time.monotonic() - started < 60


def test_a_key_left_by_a_coordinator_killed_before_its_manifest_is_no_phantom_job(api: Api,
                                                                                  stack: FaultStack) -> None:
    """Killed between recording the Idempotency-Key and writing the manifest (one PUT apart, too
    narrow to land a kill in): the key names a job that never was. The client's retry with that key
    gets a job that exists and runs, not a 202 for an id that then answers 404."""
    from services.coordinator.state import JobStore

    payload = _job(stack)
    key, phantom = f"key-{payload['result_path']}", "j20990101t000000-0000000000"
    JobStore(stack.store, stack.bucket).idempotent_job(stack.bucket, key, phantom)  # what the kill left
    status, body = api.call("POST", "/jobs", payload, headers={"Idempotency-Key": key})
    assert status == 202 and body["job_id"] != phantom, body
    api.wait(body["job_id"], timeout=120)
    finished(api, stack, body["job_id"], str(payload["result_path"]), state="succeeded",
             winners=dict.fromkeys(ALL, 1), invoked=dict.fromkeys(ALL, 1), objects=job_objects(ALL))
    again = api.call("POST", "/jobs", payload, headers={"Idempotency-Key": key})[1]
    assert again["job_id"] == body["job_id"], "the key now names the job that ran"


def test_a_restart_while_lambda_is_unreachable_serves_and_resumes_once_it_answers(
        start_coordinator: Callable[..., Api], stack: FaultStack) -> None:
    """Killed mid-job, restarted while Lambda gives no answer: the coordinator starts (it crashed
    reading the function's capacity for the job it resumed), answers 503 on /readyz, and the job
    waits; restarted again with Lambda back, the job finishes."""
    from services.ports import free_port

    api = start_coordinator()
    payload = _job(stack, hold_s=4.0)
    job_id = api.submit(payload)
    stack.wait_phase(job_id, "invoked")
    api.kill()
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = start_coordinator(AWS_ENDPOINT_URL_LAMBDA=nowhere)  # raised ChildError before the fix
    assert down.call("GET", "/readyz")[0] == 503
    assert down.call("GET", f"/jobs/{job_id}")[1]["state"] in ("queued", "running")
    down.kill()
    restarted = start_coordinator()
    assert restarted.wait(job_id, timeout=WORKER_TIMEOUT_S + 90)["state"] == "succeeded"


def _post(api: Api, payload: dict[str, object]) -> Any:
    """``POST /jobs`` as a client that retries with one Idempotency-Key; the error if none answered."""
    try:
        return api.call("POST", "/jobs", payload, headers={"Idempotency-Key": f"key-{payload['result_path']}"})
    except OSError as exc:  # the coordinator died mid-request: what the client sees
        return exc


def test_killed_mid_fan_out_the_restart_waits_for_the_orphans_instead_of_running_them_again(
        start_coordinator: Callable[..., Api], stack: FaultStack) -> None:
    """Two ranks done, two in flight (2 sandboxes) at the kill: the restarted coordinator counts the
    two orphans' own results; nothing runs twice. (Fails while a restart re-invokes in-flight ranks.)"""
    api = start_coordinator()
    payload = _job(stack, hold_s=HOLD_S)
    submitted = time.monotonic()
    job_id = api.submit(payload)
    deadline = time.monotonic() + 60
    while len(stack.invocations(job_id)) < PARTITIONS:  # the second wave went out: ranks 2 and 3 in flight
        assert time.monotonic() < deadline, stack.lines(job_id)
        time.sleep(0.02)
    api.kill()
    in_flight = {rank for rank, _ in stack.invocations(job_id)[SANDBOXES:]}
    assert stack.result_objects(str(payload["result_path"])) >= {"0.json", "1.json"}
    assert not {f"{rank}.json" for rank in in_flight} & stack.result_objects(str(payload["result_path"]))
    restarted = start_coordinator()
    restarted.wait(job_id, timeout=WORKER_TIMEOUT_S + 60)
    took = time.monotonic() - submitted
    summary = finished(restarted, stack, job_id, str(payload["result_path"]), state="succeeded",
                       winners=dict.fromkeys(ALL, 1), invoked=dict.fromkeys(ALL, 1), objects=job_objects(ALL))
    assert summary["invocations"]["attempts"] == PARTITIONS
    assert took < 2 * (HOLD_S + 15) + 20, f"{took:.1f} s: the restart waited past the orphans' answers"


def test_killed_mid_summary_the_restart_writes_the_summary_once_and_runs_nothing_again(
        start_coordinator: Callable[..., Api], stack: FaultStack) -> None:
    """Every rank done, S3 frozen before the coordinator could write the summary, the coordinator
    killed there: the restart finds every result in S3, invokes nothing, and writes the summary."""
    api = start_coordinator()
    last = PARTITIONS - 1
    payload = _job(stack, before_collective_s={str(last): 2.0})  # results written, the rank not yet answered
    job_id = api.submit(payload)
    stack.wait_phase(job_id, "collective", rank=last)
    deadline = time.monotonic() + 30
    while not {f"{rank}.json" for rank in ALL} <= stack.result_objects(str(payload["result_path"])):
        assert time.monotonic() < deadline, "the ranks' results were not all written"  # (the others may lag)
        time.sleep(0.05)
    with stack.s3_frozen():
        time.sleep(3.0)  # the last rank answers; the coordinator's next S3 call (journal, summary) hangs
        api.kill()
    objects = stack.result_objects(str(payload["result_path"]))
    assert objects == job_objects(ALL) - {"summary.json", "combined_data.json"}, objects
    started = time.monotonic()
    restarted = start_coordinator()
    restarted.wait(job_id, timeout=60)
    finished(restarted, stack, job_id, str(payload["result_path"]), state="succeeded",
             winners=dict.fromkeys(ALL, 1), invoked=dict.fromkeys(ALL, 1), objects=job_objects(ALL))
    assert time.monotonic() - started < 20
