"""A worker sandbox of the local runtime killed with SIGKILL mid-rank: the rank is retried and
succeeds, and its peer, waiting in the collective, leaves it at once (the abort marker) instead of
waiting out the collective's deadline."""

from __future__ import annotations

import os
import signal
import time

from tests.common import Api
from tests.faults.checks import finished, job_objects
from tests.faults.conftest import SANDBOXES, FaultStack

HOLD_S = 4.0


def test_a_sandbox_killed_mid_rank_is_retried_and_its_peer_leaves_the_collective(api: Api, stack: FaultStack) -> None:
    payload = stack.payload(file_limit=str(SANDBOXES), world_size=SANDBOXES, communicator=True)
    victim = SANDBOXES - 1
    stack.direct(payload["result_path"], hold_s={str(victim): HOLD_S}, first_attempt_only=True)
    started = time.monotonic()
    job_id = api.submit(payload)
    stack.wait_phase(job_id, "invoked", rank=victim)
    stack.wait_phase(job_id, "collective", rank=0)  # its peer waits for it in the collective
    os.kill(stack.pid_of(job_id, victim), signal.SIGKILL)
    final = api.wait(job_id, timeout=90)
    took = time.monotonic() - started
    ranks = list(range(SANDBOXES))
    finished(api, stack, job_id, payload["result_path"], state="succeeded",
             winners={**dict.fromkeys(ranks, 1), victim: 2}, invoked={**dict.fromkeys(ranks, 1), victim: 2},
             objects=job_objects(ranks, markers=("abort",), job_id=job_id))
    (killed, retried) = final["ranks"][victim]["attempts"]
    assert killed["state"] == "failed" and "Runtime.ExitError" in killed["error"], killed
    assert retried["state"] == "succeeded", retried
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["collective"]["status"] != "agreed", report["collective"]
    assert took < HOLD_S + 30, f"{took:.1f} s: the peers waited for the killed rank in the collective"
