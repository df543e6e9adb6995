"""The job manifest: one typed document, read back as written, old ones included, bad ones named."""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

import pytest

from services.coordinator.manifest import Manifest, ManifestError, read_manifest, write_manifest
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, plan

#: A manifest as the coordinator of commit 8bb19df wrote it for a job that ended (failed, with a
#: summary), byte for byte but the indentation: the form jobs a restarted coordinator resumes are in.
OLD_FORMAT = """{
  "version": 1, "job_id": "j20261125t044500-3f9a1c2e7b", "state": "failed", "submitted_at": 1795000000.25,
  "request": {"bucket": "cosmicai-data", "file_limit": 3, "batch_size": 32, "object_type": "folder",
              "S3_object_name": "Anomaly Detection", "script": "/tmp/Anomaly Detection/Inference/inference.py",
              "result_path": "results/old", "data_bucket": "cosmicai-data", "data_prefix": "25MB", "world_size": 2,
              "max_concurrency": null, "max_attempts": null, "assignment": null, "communicator": null,
              "mode": "native", "checkpoint": {"bucket": "cosmicai-data", "key": "models/redshift.safetensors",
                                               "sha256": null}, "function": null},
  "function": "cosmic-worker", "world_size": 2,
  "partitions": [["25MB/1.pt", 26240000], ["25MB/2.pt", 26240000], ["25MB/3.pt", 26240000]],
  "input_bytes": 78720000, "partition_label": "25MB", "max_concurrency": 2, "max_attempts": 3,
  "rendezvous": "10.0.3.7:10000", "communicator": true, "assignment": "contiguous",
  "events": [
    {"job_id": "j20261125t044500-3f9a1c2e7b", "rank": 0, "world_size": 2, "data_bucket": "cosmicai-data",
     "partitions": ["25MB/1.pt", "25MB/2.pt"], "result_bucket": "cosmicai-data", "result_path": "results/old",
     "batch_size": 32, "attempt": 1, "mode": "native", "model_bucket": "cosmicai-data",
     "model_prefix": "Anomaly Detection", "script": null,
     "checkpoint": {"bucket": "cosmicai-data", "key": "models/redshift.safetensors", "sha256": null},
     "rendezvous": "10.0.3.7:10000", "comm_name": "92a3696ce1dda0b6d89121d6062f7e10",
     "cancel_key": "jobs/j20261125t044500-3f9a1c2e7b/cancel", "collective_timeout_s": 120.0, "version": 1},
    {"job_id": "j20261125t044500-3f9a1c2e7b", "rank": 1, "world_size": 2, "data_bucket": "cosmicai-data",
     "partitions": ["25MB/3.pt"], "result_bucket": "cosmicai-data", "result_path": "results/old",
     "batch_size": 32, "attempt": 1, "mode": "native", "model_bucket": "cosmicai-data",
     "model_prefix": "Anomaly Detection", "script": null,
     "checkpoint": {"bucket": "cosmicai-data", "key": "models/redshift.safetensors", "sha256": null},
     "rendezvous": "10.0.3.7:10000", "comm_name": "92a3696ce1dda0b6d89121d6062f7e10",
     "cancel_key": "jobs/j20261125t044500-3f9a1c2e7b/cancel", "collective_timeout_s": 120.0, "version": 1}
  ],
  "idempotency_key": "sweep-25MB-2", "error": null, "warnings": [], "updated_at": 1795000043.0,
  "started_at": 1795000001.0, "finished_at": 1795000042.75,
  "failed_ranks": {"1": "Task timed out after 900.00 seconds"},
  "summary_key": "s3://cosmicai-data/results/old/summary.json"
}"""


def new_manifest(**request: Any) -> Manifest:
    payload = {"bucket": "cosmicai-data", "file_limit": "3", "batch_size": 32, "S3_object_name": "Anomaly Detection",
               "result_path": "results/new", "data_bucket": "cosmicai-data", "data_prefix": "data/25MB/", **request}
    job_request = JobRequest.model_validate(payload)
    partitions = [Partition(f"data/25MB/{i}.pt", 1000 * i) for i in (1, 2, 3)]
    job_plan = plan(job_request, partitions, job_id="j-new", function_timeout_s=900, max_world_size=8,
                    rendezvous="127.0.0.1:10000")
    return Manifest.from_plan("j-new", job_request, job_plan, function="cosmic-worker", max_attempts=3,
                              rendezvous="127.0.0.1:10000", idempotency_key="key-1", warnings=["a warning"])


def test_round_trip_keeps_every_field() -> None:
    manifest = new_manifest(world_size=2, checkpoint={"bucket": "cosmicai-data", "key": "models/m.safetensors"})
    ended = manifest.model_copy(update={"state": "failed", "started_at": 1.0, "finished_at": 2.0, "retried_at": 1.5,
                                        "cancel_requested": True, "summary_error": "no results",
                                        "failed_ranks": {"1": "boom"}, "error": "job deadline passed"})
    for original in (manifest, ended):
        document = json.loads(json.dumps(original.to_json()))  # what S3 holds
        assert Manifest.from_json(document) == original
        assert Manifest.from_json(document).to_json() == document


def test_derived_fields_are_written_and_agree_with_the_plan() -> None:
    manifest = new_manifest(world_size=2)
    document = manifest.to_json()
    assert (document["world_size"], document["input_bytes"], document["partition_label"]) == (2, 6000, "25MB")
    assert document["communicator"] is True and manifest.events[1].partitions == ("data/25MB/3.pt",)
    assert {"started_at", "finished_at", "summary_key", "failed_ranks", "cancel_requested"}.isdisjoint(document)


def test_a_manifest_written_by_the_previous_coordinator_loads_and_is_written_back_unchanged() -> None:
    document = json.loads(OLD_FORMAT)
    manifest = Manifest.from_json(document)
    assert manifest.state == "failed" and manifest.world_size == 2 and manifest.communicator
    assert manifest.request.data_bucket == "cosmicai-data" and manifest.request.result_path == "results/old"
    checkpoint = manifest.events[0].checkpoint
    assert checkpoint is not None and checkpoint.key == "models/redshift.safetensors"
    assert manifest.events[1].partitions == ("25MB/3.pt",) and manifest.input_bytes == 78720000
    assert manifest.failed_ranks == {"1": "Task timed out after 900.00 seconds"}
    assert manifest.summary_key == "s3://cosmicai-data/results/old/summary.json"
    assert manifest.to_json() == document, "the JSON format is the one older coordinators read and wrote"


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    if value is _DELETE:
        del document[path[-1]]
    else:
        document[path[-1]] = value


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "field"), [
    (("events",), _DELETE, "events"),
    (("events",), [], "events"),
    (("events", 1, "rank"), "one", "events[1].rank"),
    (("events", 1, "rank"), 0, "events[1]"),
    (("events", 0, "job_id"), "j-other", "events[0].job_id"),
    (("events", 0, "partitions"), ["../escape.pt"], "events[0].partitions"),
    (("request", "data_bucket"), _DELETE, "request.data_bucket"),
    (("request", "data_bucket"), "Not_A_Bucket", "request.data_bucket"),
    (("partitions", 2), ["25MB/3.pt"], "partitions[2]"),
    (("state",), "paused", "state"),
    (("submitted_at",), "soon", "submitted_at"),
    (("max_attempts",), 0, "max_attempts"),
    (("version",), 2, "version"),
    (("version",), _DELETE, "version"),
])
def test_a_malformed_manifest_names_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    document = copy.deepcopy(json.loads(OLD_FORMAT))
    _set(document, path, value)
    with pytest.raises(ManifestError) as raised:
        Manifest.from_json(document)
    assert raised.value.field == field, str(raised.value)
    assert str(raised.value).startswith(f"bad job manifest: {field}: ")


def test_a_manifest_must_be_an_object() -> None:
    with pytest.raises(ManifestError, match="bad job manifest: manifest: must be a JSON object, got list"):
        Manifest.from_json([])


def test_manifest_through_s3(s3_endpoint: str) -> None:
    from services.s3store import S3Store

    store = S3Store()
    bucket = f"cosmic-manifest-{secrets.token_hex(4)}"
    store.client.create_bucket(Bucket=bucket)
    manifest = new_manifest()
    written = write_manifest(store, bucket, "jobs/j-new/manifest.json", manifest)
    assert written.updated_at is not None and written.model_copy(update={"updated_at": None}) == manifest
    assert read_manifest(store, bucket, "jobs/j-new/manifest.json") == written
    assert read_manifest(store, bucket, "jobs/j-none/manifest.json") is None
    store.put_json(bucket, "jobs/j-bad/manifest.json", {**written.to_json(), "events": [{"version": 1, "rank": 0}]})
    with pytest.raises(ManifestError, match=rf"events\[0\]\.job_id: required \(in s3://{bucket}/jobs/j-bad/"):
        read_manifest(store, bucket, "jobs/j-bad/manifest.json")
