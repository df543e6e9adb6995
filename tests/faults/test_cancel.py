"""``DELETE /jobs/{id}`` in each phase of a rank: queued (its job waits for capacity), downloading,
inferring, in the collective. The job is ``cancelling`` at once and ``cancelled`` within seconds;
ranks that saw the marker write nothing; what finished before the cancel stays, counted once."""

from __future__ import annotations

import time

from tests.common import Api
from tests.faults.checks import finished, job_objects
from tests.faults.conftest import PARTITIONS, SANDBOXES, FaultStack

#: Seconds a phase is stretched, so the cancel surely lands in it.
STRETCH_S = 4.0
#: How long after the DELETE the job must be ``cancelled``: a marker look is at most 1 s apart.
CANCEL_BOUND_S = 5.0


def _cancel(api: Api, job_id: str) -> float:
    """DELETE the job; returns the seconds until it was ``cancelled``."""
    asked = time.monotonic()
    status, answer = api.call("DELETE", f"/jobs/{job_id}")
    assert status == 202 and answer["state"] == "cancelling", answer
    final = api.wait(job_id, timeout=30)
    assert final["state"] == "cancelled", final
    return time.monotonic() - asked


def test_cancel_while_queued_behind_another_job_invokes_nothing(api: Api, stack: FaultStack) -> None:
    holding = stack.payload(file_limit=str(SANDBOXES), world_size=SANDBOXES, communicator=False)
    stack.direct(holding["result_path"], hold_s=STRETCH_S)
    holder = api.submit(holding)
    stack.wait_phase(holder, "invoked")  # it holds the sandboxes before the next job enters the queue
    payload = stack.payload(world_size=1, communicator=False)
    job_id = api.submit(payload)
    assert api.call("GET", f"/jobs/{job_id}")[1]["state"] == "queued"
    assert _cancel(api, job_id) < CANCEL_BOUND_S
    finished(api, stack, job_id, payload["result_path"], state="cancelled", winners={}, invoked={},
             objects=job_objects([], markers=("cancel",), job_id=job_id))
    api.wait(holder, timeout=60)
    ranks = list(range(SANDBOXES))
    finished(api, stack, holder, holding["result_path"], state="succeeded", winners=dict.fromkeys(ranks, 1),
             invoked=dict.fromkeys(ranks, 1), objects=job_objects(ranks))


def _cancel_in(api: Api, stack: FaultStack, phase: str, **directives: object) -> tuple[str, dict, float]:
    """A one-rank job over two partitions, cancelled once its rank is in ``phase``."""
    payload = stack.payload(file_limit="2", world_size=1, communicator=False, batch_size=8)
    stack.direct(payload["result_path"], **directives)
    job_id = api.submit(payload)
    stack.wait_phase(job_id, phase, rank=0)
    return job_id, payload, _cancel(api, job_id)


def test_cancel_while_downloading_stops_before_inference(api: Api, stack: FaultStack) -> None:
    job_id, payload, took = _cancel_in(api, stack, "downloading", download_s=STRETCH_S)
    assert took < STRETCH_S + CANCEL_BOUND_S  # the download under way finishes; then the hook sees the marker
    finished(api, stack, job_id, payload["result_path"], state="cancelled", winners={}, invoked={0: 1},
             objects=job_objects([], markers=("cancel",), job_id=job_id))
    (attempt,) = api.call("GET", f"/jobs/{job_id}")[1]["ranks"][0]["attempts"]
    assert attempt["state"] == "cancelled", attempt
    _report_counts_nothing(api, job_id)


def test_cancel_while_inferring_stops_within_a_batch_or_two(api: Api, stack: FaultStack) -> None:
    job_id, payload, took = _cancel_in(api, stack, "inferring", batch_s=0.5)
    assert took < CANCEL_BOUND_S
    finished(api, stack, job_id, payload["result_path"], state="cancelled", winners={}, invoked={0: 1},
             objects=job_objects([], markers=("cancel",), job_id=job_id))
    _report_counts_nothing(api, job_id)


def _report_counts_nothing(api: Api, job_id: str) -> None:
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["state"] == "cancelled" and report["partitions"] == 0, report


def test_cancel_while_in_the_collective_keeps_the_finished_rank_and_stops_the_other(
        api: Api, stack: FaultStack) -> None:
    """Rank 0 finished its partitions and waits in the collective for rank 1, still starting: the
    cancel takes rank 0 out of the collective (its results stay) and stops rank 1 before it infers."""
    payload = stack.payload(file_limit=str(SANDBOXES), world_size=SANDBOXES, communicator=True)
    late = SANDBOXES - 1
    stack.direct(payload["result_path"], hold_s={str(late): STRETCH_S})
    job_id = api.submit(payload)
    stack.wait_phase(job_id, "collective", rank=0)
    time.sleep(0.5)  # in it, not entering it
    assert _cancel(api, job_id) < STRETCH_S + CANCEL_BOUND_S
    done = list(range(late))
    finished(api, stack, job_id, payload["result_path"], state="cancelled", winners=dict.fromkeys(done, 1),
             invoked=dict.fromkeys(range(SANDBOXES), 1),
             objects=job_objects(done, markers=("cancel",), job_id=job_id))
    states = [rank["attempts"][0]["state"] for rank in api.call("GET", f"/jobs/{job_id}")[1]["ranks"]]
    assert states == ["succeeded"] * late + ["cancelled"], states


def test_cancel_stops_scheduling_the_ranks_not_started(api: Api, stack: FaultStack) -> None:
    """One rank at a time: rank 0 done, rank 1 starting at the cancel, ranks 2 and 3 never invoked;
    the report counts only the input rank 0 read."""
    payload = stack.payload(file_limit=str(PARTITIONS), world_size=PARTITIONS, communicator=False,
                            max_concurrency=1)
    stack.direct(payload["result_path"], hold_s={"1": STRETCH_S})
    job_id = api.submit(payload)
    stack.wait_phase(job_id, "invoked", rank=1)
    assert _cancel(api, job_id) < STRETCH_S + CANCEL_BOUND_S
    assert api.call("DELETE", f"/jobs/{job_id}")[0] == 409
    finished(api, stack, job_id, payload["result_path"], state="cancelled", winners={0: 1}, invoked={0: 1, 1: 1},
             objects=job_objects([0], markers=("cancel",), job_id=job_id))
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["state"] == "cancelled" and report["partitions"] == 1, report
    sizes = {key: size for key, _, size in stack.store.objects(stack.bucket, "tiny/")}
    assert report["input_bytes"] == sizes["tiny/1.pt"], "only what the finished rank read"
    status, markdown = api.call("GET", f"/jobs/{job_id}/report?format=md")
    assert b"**cancelled**: the sizes below count only the ranks that finished" in markdown
