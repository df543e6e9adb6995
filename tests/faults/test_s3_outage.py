"""S3 or Lambda giving no answer: 503s naming the endpoint, ``/healthz`` and ``/readyz``, and a job
that outlives an S3 outage.

The outage test gives the coordinator an S3 of its own (moto's server, restartable with its state:
:mod:`tests.faults.moto_restartable`) and a runtime whose worker touches no S3, so stopping
that server takes S3 away from the coordinator alone, mid-job.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.local.s3server import S3Server
from services.ports import free_port
from tests.common import REPO, Api, Servers, wait_for
from tests.processes import runtime_process

#: How long each rank of the outage test's jobs takes: long enough to stop S3 while one runs.
RANK_S = 2.0


@pytest.fixture
def own_s3(e2e: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    monkeypatch.setenv("MOTO_ENABLE_RECORDING", "1")
    monkeypatch.setenv("MOTO_RECORDER_FILEPATH", str(tmp_path / "s3-requests.jsonl"))
    server = S3Server(log_path=tmp_path / "s3.log", module="tests.faults.moto_restartable", cwd=REPO).start()
    yield server
    server.stop()


@pytest.fixture
def sleepy_runtime(e2e: None, tmp_path: Path) -> Iterator[str]:
    with runtime_process(tmp_path / "runtime.log", "--sandboxes", "2", "--timeout", "60", "--handler",
                         "tests.faults.sleepy_handler.handler",
                         env={"COSMIC_TEST_SLEEP_S": str(RANK_S)}) as endpoint:
        yield endpoint


def _ready(api: Api) -> tuple[int, dict]:
    status, body = api.call("GET", "/readyz")
    return status, body


def test_lambda_unreachable_is_a_503_naming_it_and_readyz_says_so(start_coordinator: Callable[..., Api],
                                                                  stack: Servers) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    api = start_coordinator(AWS_ENDPOINT_URL_LAMBDA=nowhere)
    status, body = api.call("POST", "/jobs", stack.payload())
    assert status == 503, body
    assert "lambda" in body["detail"] and nowhere in body["detail"], body
    assert api.call("GET", "/healthz")[0] == 200
    status, ready = _ready(api)
    assert status == 503 and ready["status"] == "unavailable", ready
    assert ready["checks"]["lambda"]["ok"] is False and ready["checks"]["lambda"]["endpoint"] == nowhere, ready
    assert ready["checks"]["s3"]["ok"] is True, ready
    assert api.call("GET", "/jobs")[0] == 200, "S3 still answers: listing jobs does not need Lambda"


def test_s3_stopped_mid_job_is_503_naming_it_then_the_job_finishes_when_s3_returns(
        start_coordinator: Callable[..., Api], stack: Servers, own_s3: S3Server, sleepy_runtime: str) -> None:
    from services.coordinator.manifest import read_manifest
    from services.coordinator.state import ACTIVE, manifest_key
    from services.s3store import S3Store, s3_client

    store = S3Store(s3_client(own_s3.endpoint))
    bucket = "cosmic-outage-" + secrets.token_hex(4)
    store.client.create_bucket(Bucket=bucket)
    for index in (1, 2):
        store.put(bucket, f"tiny/{index}.pt", b"the sleepy worker never reads it")
    api = start_coordinator(AWS_ENDPOINT_URL_S3=own_s3.endpoint, AWS_ENDPOINT_URL_LAMBDA=sleepy_runtime,
                            COSMIC_STATE_BUCKET=bucket)
    assert _ready(api)[0] == 200, _ready(api)
    payload = {"bucket": bucket, "file_limit": "2", "S3_object_name": "model", "data_bucket": bucket,
               "data_prefix": "tiny", "world_size": 2, "communicator": False}
    earlier = api.submit({**payload, "result_path": "results/earlier"})
    assert api.wait(earlier, timeout=60)["state"] == "succeeded"
    job_id = api.submit({**payload, "result_path": "results/outage", "max_concurrency": 1})
    wait_for(lambda: api.call("GET", f"/jobs/{job_id}")[1]["ranks_by_state"].get("running", 0) >= 1,
             "a rank running", 30, api.log)

    own_s3.stop()
    status, body = api.call("GET", "/jobs")
    assert status == 503 and body["detail"].startswith(f"s3 at {own_s3.endpoint} is unavailable"), body
    status, body = api.call("GET", "/jobs/j20990101t000000-0000000000")  # a job only S3 could know of
    assert status == 503 and own_s3.endpoint in body["detail"], body
    status, body = api.call("GET", f"/jobs/{earlier}/report")
    assert status == 503 and own_s3.endpoint in body["detail"], body
    assert api.call("GET", "/healthz")[0] == 200
    status, ready = _ready(api)
    assert status == 503, ready
    assert ready["checks"]["s3"]["ok"] is False and ready["checks"]["s3"]["endpoint"] == own_s3.endpoint, ready
    assert ready["checks"]["lambda"]["ok"] is True, ready
    # both ranks finish while S3 is gone (they need none, and both attempts went into S3 in one wave
    # before it went): the job's journal and its ending wait for S3
    wait_for(lambda: api.call("GET", f"/jobs/{job_id}")[1]["ranks_by_state"].get("succeeded", 0) == 2,
             "both ranks done", 30, api.log)
    time.sleep(1.0)
    status, during = api.call("GET", f"/jobs/{job_id}")  # this coordinator's own job: from memory
    assert status == 200 and during["state"] == "running", during

    own_s3.start()
    wait_for(lambda: _ready(api)[0] == 200, "/readyz 200 once S3 is back", 30, api.log)
    final = api.wait(job_id, timeout=60)
    assert final["state"] == "succeeded" and final["error"] is None, final
    assert [[a["state"] for a in rank["attempts"]] for rank in final["ranks"]] == [["succeeded"]] * 2, final["ranks"]
    summary = store.get_json(bucket, "results/outage/summary.json")
    assert summary["invocations"]["attempts"] == 2 and summary["cost"]["lambda_requests"] > 0, summary
    assert sorted(store.keys(bucket, "results/outage/")) == ["results/outage/combined_data.json",
                                                            "results/outage/summary.json"], "no rank writes"
    status, listed = api.call("GET", "/jobs")
    assert status == 200 and {job["job_id"] for job in listed} >= {earlier, job_id}, listed
    written = read_manifest(store, bucket, manifest_key(job_id))
    assert written is not None and written.state == "succeeded", written
    assert list(store.keys(bucket, ACTIVE)) == [], "the finished job released its result path"
    assert "s3_unanswered_retrying" in api.log.read_text()
