"""The old ``jobs/`` layout is still read, and nothing unreadable met among the coordinator's own
objects stops a coordinator starting. (A payload naming the reserved ``.cosmic/`` prefix, a 422, is
in the fault matrix: ``tests/faults/test_bounded_input.py``.)"""

from __future__ import annotations

import json
from collections.abc import Callable

from services.coordinator.state import ACTIVE, JOBS, LEGACY_ACTIVE, LEGACY_JOBS, active_key, manifest_key
from tests.common import Api, Servers
from tests.coordinator.conftest import PARTITIONS


def test_unreadable_state_does_not_stop_startup_and_shows_on_its_job(start_coordinator: Callable[..., Api],
                                                                     stack: Servers) -> None:
    """The incident: a job with ``result_path: jobs/active`` put its arrays among the old layout's
    locks, and the next coordinator died reading them as JSON at startup."""
    api = start_coordinator()
    incident = api.submit(stack.payload(result_path="jobs/active", world_size=1, communicator=False))
    assert api.wait(incident)["state"] == "succeeded"
    assert any(key.endswith(".npy") for key in stack.keys(LEGACY_ACTIVE)), "the arrays are where the locks were"
    broken, bad_legacy = "j20261130t000000-0b5cafe0b5", "j20261130t000001-01dcafe01d"
    planted = {manifest_key(broken): b"\x93NUMPY not a manifest", active_key(stack.bucket, "results/x"):
               json.dumps({"job_id": broken, "result": "s3://b/results/x"}).encode(),
               f"{ACTIVE}garbage.json": b"{", manifest_key(bad_legacy, LEGACY_JOBS): b'{"version": 1}',
               active_key(stack.bucket, "results/y", LEGACY_ACTIVE):
               json.dumps({"job_id": bad_legacy, "result": "s3://b/results/y"}).encode()}
    try:
        for key, data in planted.items():
            stack.store.put(stack.bucket, key, data)
        api.kill()
        restarted = start_coordinator()  # waits for /healthz: the coordinator came up
        status, listed = restarted.call("GET", "/jobs?limit=1000")
        assert status == 200, listed
        by_id = {job["job_id"]: job for job in listed}
        assert by_id[incident]["state"] == "succeeded"
        for job_id in (broken, bad_legacy):
            assert by_id[job_id]["state"] == "unreadable" and by_id[job_id]["error"], by_id[job_id]
        status, shown = restarted.call("GET", f"/jobs/{broken}")
        assert status == 200 and shown["state"] == "unreadable" and "not valid JSON" in shown["error"], shown
        status, shown = restarted.call("GET", f"/jobs/{bad_legacy}")
        assert status == 200 and shown["state"] == "unreadable" and "manifest" in shown["error"], shown
        assert "state_unreadable" in restarted.log.read_text()
    finally:
        for key in list(planted) + stack.keys(LEGACY_ACTIVE):
            stack.store.delete(stack.bucket, key)


def test_a_job_left_under_the_old_layout_is_resumed_where_it_is(start_coordinator: Callable[..., Api],
                                                               stack: Servers) -> None:
    """A coordinator of the previous version was killed mid-job: its manifest, journal and lock
    are under ``jobs/``. The new one resumes it there and releases its lock there."""
    api = start_coordinator()
    payload = stack.payload(file_limit=str(PARTITIONS), world_size=PARTITIONS, communicator=False, max_concurrency=1)
    job_id = api.submit(payload)
    api.wait_for_ranks(job_id, 2)
    api.kill()
    lock = active_key(stack.bucket, payload["result_path"])
    moves = {key: LEGACY_JOBS + key[len(JOBS):] for key in stack.keys(f"{JOBS}{job_id}/")}
    moves[lock] = active_key(stack.bucket, payload["result_path"], LEGACY_ACTIVE)
    for old, new in moves.items():  # what the previous version wrote, where it wrote it
        stack.store.put(stack.bucket, new, stack.store.get(stack.bucket, old).data)
        stack.store.delete(stack.bucket, old)
    restarted = start_coordinator()
    final = restarted.wait(job_id, timeout=120)
    assert final["state"] == "succeeded", final
    assert stack.keys(f"{JOBS}{job_id}/") == [], "a resumed job stays in the layout it started in"
    assert f"{LEGACY_JOBS}{job_id}/ranks.json" in stack.keys(f"{LEGACY_JOBS}{job_id}/")
    assert stack.store.etag(stack.bucket, moves[lock]) is None, "its old lock is released"
