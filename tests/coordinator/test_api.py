"""The coordinator end to end through its HTTP API: real S3, real runtime and worker, real rendezvous."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from typing import Any

from services.coordinator.state import manifest_key
from services.keys import control_key
from tests.common import REPO, Api, Servers
from tests.coordinator.conftest import PARTITIONS, SANDBOXES


def test_legacy_payload_runs_to_a_report(api: Api, stack: Servers) -> None:
    payload = stack.payload()
    job_id = api.submit(payload)
    final = api.wait(job_id)
    assert final["state"] == "succeeded" and final["ranks_by_state"] == {"succeeded": 3}, final
    assert final["communicator"] is True and final["world_size"] == 3
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["samples"] == 3 * 48 and report["world_size"] == 3
    assert report["collective"]["status"] == "agreed", report["collective"]
    assert report["cost"]["total"] > report["legacy_cost"]["total"] > 0
    combined = json.loads(stack.store.get(stack.bucket, f"{payload['result_path']}/combined_data.json").data)
    assert [doc["rank"] for doc in combined] == [0, 1, 2]
    assert combined[0]["data_path"] == ["tiny/1.pt"], "contiguous runs in numeric order"
    for fmt, marker in (("md", "| Partition | World Size |"), ("csv", "Partition,World Size")):
        status, text = api.call("GET", f"/jobs/{job_id}/report?format={fmt}")
        assert status == 200 and marker in text.decode(), text[:300]
    for name in ("predicted_vs_true", "duration_cost", "timeline"):
        status, png = api.call("GET", f"/jobs/{job_id}/plots/{name}.png")
        assert status == 200 and png.startswith(b"\x89PNG"), name
    status, listed = api.call("GET", "/jobs")
    assert status == 200 and job_id in [job["job_id"] for job in listed]


def test_workers_get_the_rendezvous_address_the_name_has_when_the_job_starts(start_coordinator, stack: Servers) -> None:
    """On AWS the name follows the rendezvous task; every rank of a job gets the one address it had."""
    port = stack.rendezvous.rpartition(":")[2]
    api = start_coordinator(COSMIC_RENDEZVOUS_ENDPOINT=f"localhost:{port}")
    job_id = api.submit(stack.payload(world_size=2))
    assert api.wait(job_id)["state"] == "succeeded"
    manifest = json.loads(stack.store.get(stack.bucket, manifest_key(job_id)).data)
    assert manifest["rendezvous"] == f"127.0.0.1:{port}"
    assert {event["rendezvous"] for event in manifest["events"]} == {f"127.0.0.1:{port}"}
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["collective"]["status"] == "agreed", report["collective"]


def test_a_rendezvous_name_that_does_not_resolve_is_passed_on_with_a_warning(start_coordinator, stack: Servers) -> None:
    api = start_coordinator(COSMIC_RENDEZVOUS_ENDPOINT="no-such-host.invalid:10000")
    status, body = api.call("POST", "/jobs", stack.payload(world_size=1, communicator=False))
    assert status == 202 and any("does not resolve" in warning for warning in body["warnings"]), body
    assert api.wait(body["job_id"])["state"] == "succeeded"


def test_file_limit_all_takes_every_partition_under_the_prefix(api: Api, stack: Servers) -> None:
    """What ``cosmic sweep`` sends, so that it needs no S3 listing of its own."""
    final = api.wait(api.submit(stack.payload(file_limit="ALL", world_size=2, communicator=False)))
    assert final["state"] == "succeeded" and final["partitions"] == PARTITIONS, final
    status, body = api.call("POST", "/jobs", stack.payload(file_limit="some"))
    assert status == 422 and "whole number" in detail_of(body) and "'all'" in detail_of(body), body


def test_a_job_wider_than_the_functions_capacity_is_warned_at_submit(api, stack: Servers) -> None:
    """The runtime's sandboxes are the function's reserved concurrency, read as on AWS."""
    status, body = api.call("POST", "/jobs", stack.payload(file_limit="6", world_size=6, communicator=False))
    assert status == 202, body
    assert any(f"may run {SANDBOXES} at once (reserved concurrency of the function)" in warning
               and "wants 6" in warning for warning in body["warnings"]), body
    assert api.wait(body["job_id"])["state"] == "succeeded"
    status, narrow = api.call("POST", "/jobs", stack.payload(world_size=2, communicator=False))
    assert status == 202 and not narrow["warnings"], narrow
    assert api.wait(narrow["job_id"])["state"] == "succeeded"


def detail_of(body: Any) -> str:
    return json.dumps(body["detail"])


def test_bad_payloads_are_422_naming_the_field(api: Api, stack: Servers) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"file_limit": "eleven"}, "file_limit", "whole number"),
        ({"file_limit": 0}, "file_limit", "at least 1"),
        ({"bucket": "Not_A_Bucket"}, "bucket", "bucket name"),
        ({"result_path": "../escape"}, "result_path", ".."),
        ({"data_prefix": "nothing-here"}, "data_prefix", "prefixes that exist: Anomaly Detection"),
        ({"file_limit": "99"}, "file_limit", f"holds {PARTITIONS}"),
        ({"world_size": 3, "max_concurrency": 2, "communicator": True}, "communicator", "all 3 ranks at once"),
        ({"world_size": 5, "assignment": "contiguous"}, "assignment", "idle"),
        ({"world_size": 100_000}, "world_size", "at most"),
        ({"mode": "script", "script": None}, "script", "needs the 'script' field"),
        ({"unknown_field": 1}, "unknown_field", "Extra inputs"),
        ({"batch_size": 0}, "batch_size", "greater than or equal to 1"),
    ]
    for change, field_name, reason in cases:
        status, body = api.call("POST", "/jobs", stack.payload(**change))
        assert status == 422, (change, body)
        assert field_name in detail_of(body) and reason in detail_of(body), (change, body)
    payload = stack.payload()
    del payload["data_prefix"]
    status, body = api.call("POST", "/jobs", payload)
    assert status == 422 and "data_prefix" in detail_of(body)
    status, body = api.call("POST", "/jobs", raw=b"x" * 100_000)
    assert status == 413, body
    assert api.call("GET", "/jobs/j-nope")[0] == 404


def test_a_validation_error_quotes_an_excerpt_of_the_input(api: Api, stack: Servers) -> None:
    status, body = api.call("POST", "/jobs", stack.payload(S3_object_name="a" * 50_000))
    assert status == 422 and "S3_object_name" in detail_of(body)
    assert len(json.dumps(body)) < 2_000, len(json.dumps(body))


def test_errors_answer_with_the_status_their_class_carries(api: Api, stack: Servers) -> None:
    status, body = api.call("POST", "/jobs", stack.payload(data_bucket="no-such-bucket-here"))
    assert status == 422 and "NoSuchBucket" in body["detail"], body  # UnknownBucket, by the S3 code
    status, body = api.call("GET", "/jobs/j-nope/plots/timeline.png")
    assert status == 404 and body["detail"] == "no such job: j-nope", body
    status, body = api.call("GET", "/jobs/j-nope/plots/nope.png")
    assert status == 404 and "no plot named 'nope'" in body["detail"], body


def test_second_active_job_on_a_result_path_is_409_and_idempotency_key_returns_the_same_job(
        api: Api, stack: Servers) -> None:
    payload = stack.payload(world_size=3)
    first = api.submit(payload, **{"Idempotency-Key": "retry-me"})
    status, again = api.call("POST", "/jobs", payload, headers={"Idempotency-Key": "retry-me"})
    assert status == 202 and again["job_id"] == first and again["created"] is False
    status, body = api.call("POST", "/jobs", payload)
    assert status == 409 and first in body["detail"]
    assert api.wait(first)["state"] == "succeeded"
    assert api.submit(payload), "a finished job frees its result path"


def test_auth_when_a_token_is_configured(start_coordinator, stack: Servers) -> None:
    api = start_coordinator(token="s3cret")
    api.token = ""
    assert api.call("GET", "/jobs")[0] == 401
    assert api.call("GET", "/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert api.call("GET", "/healthz")[0] == 200
    api.token = "s3cret"
    assert api.call("GET", "/jobs")[0] == 200


def test_refuses_to_listen_beyond_loopback_without_a_token(stack: Servers) -> None:
    done = subprocess.run([sys.executable, "-m", "services.coordinator", "--host", "0.0.0.0", "--port", "0"],
                          cwd=REPO, env=stack.env(COSMIC_API_TOKEN=""), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "COSMIC_API_TOKEN" in done.stdout + done.stderr


def test_a_rank_that_fails_its_first_attempt_is_reinvoked(api: Api, stack: Servers) -> None:
    job_id = api.submit(stack.payload(result_path="results/flaky-1", world_size=3))
    final = api.wait(job_id)
    assert final["state"] == "succeeded", final
    rank1 = final["ranks"][1]
    assert [a["state"] for a in rank1["attempts"]] == ["failed", "succeeded"]
    assert "transient failure injected" in rank1["attempts"][0]["error"]
    status, report = api.call("GET", f"/jobs/{job_id}/report")
    assert status == 200 and report["invocations"]["attempts"] == 4 and report["failed_ranks"] == []


def test_two_jobs_at_once_on_one_bucket_keep_to_their_own_objects(api: Api, stack: Servers) -> None:
    first, second = stack.payload(world_size=2, communicator=False), stack.payload(world_size=2, communicator=False)
    jobs = [api.submit(first), api.submit(second)]
    assert [api.wait(job)["state"] for job in jobs] == ["succeeded", "succeeded"]
    for payload in (first, second):
        keys = stack.keys(payload["result_path"] + "/")
        assert len([k for k in keys if k.endswith(("/0.json", "/1.json"))]) == 2
        assert all(k.startswith(payload["result_path"] + "/") for k in keys)
        assert f"{payload['result_path']}/summary.json" in keys


def test_cosmic_cancel_waits_until_the_job_is_cancelled(api: Api, stack: Servers) -> None:
    job_id = api.submit(stack.payload(file_limit=str(PARTITIONS), world_size=PARTITIONS, communicator=False,
                                      max_concurrency=1))
    done = subprocess.run([sys.executable, "-m", "services.cli", "cancel", job_id, "--wait"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env={**os.environ, "COSMIC_COORDINATOR_URL": api.url})
    assert done.returncode == 0, done.stderr
    assert f"job {job_id}: cancelled" in done.stdout, done.stdout
    assert api.call("GET", f"/jobs/{job_id}")[1]["state"] == "cancelled"
    again = subprocess.run([sys.executable, "-m", "services.cli", "cancel", job_id], capture_output=True, text=True,
                           timeout=60, cwd=REPO, env={**os.environ, "COSMIC_COORDINATOR_URL": api.url})
    assert again.returncode == 1 and "already cancelled" in again.stderr, again.stderr


def test_a_failed_rank_does_not_hold_its_peers_in_the_collective(api: Api, stack: Servers) -> None:
    """Rank 1 fails its first attempt: ranks 0 and 2 leave the collective at once (the abort
    marker), instead of waiting out its deadline (30 s here) for a peer that is being retried."""
    payload = stack.payload(file_limit="3", world_size=3, communicator=True,
                            result_path=f"results/flaky-{secrets.token_hex(4)}")
    started = time.monotonic()
    final = api.wait(api.submit(payload))
    took = time.monotonic() - started
    assert final["state"] == "succeeded", final
    assert [len(rank["attempts"]) for rank in final["ranks"]] == [1, 2, 1], final["ranks"]
    assert took < 20, f"the job took {took:.1f} s: its ranks waited for the failed one"
    abort = stack.store.get_json(stack.bucket, control_key(payload["result_path"], final["job_id"], "abort"))
    assert abort["rank"] == 1 and "transient failure" in abort["reason"], abort


def test_retry_reruns_only_the_failed_ranks(api: Api, stack: Servers) -> None:
    good = stack.store.get(stack.bucket, "tiny/2.pt").data
    stack.store.put(stack.bucket, "broken/1.pt", good)
    stack.store.put(stack.bucket, "broken/2.pt", b"corrupt")
    job_id = api.submit(stack.payload(data_prefix="broken", file_limit="2", world_size=2, max_attempts=1,
                                      communicator=False))
    failed = api.wait(job_id)
    assert failed["state"] == "failed" and list(failed["failed_ranks"]) == ["1"]
    assert "broken/2.pt" in failed["failed_ranks"]["1"]
    stack.store.put(stack.bucket, "broken/2.pt", good)
    status, _ = api.call("POST", f"/jobs/{job_id}/retry")
    assert status == 202
    final = api.wait(job_id)
    assert final["state"] == "succeeded", final
    assert [len(rank["attempts"]) for rank in final["ranks"]] == [1, 2]
