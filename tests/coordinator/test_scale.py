"""What a job of 10,000 ranks needs of the coordinator: the world size allowed, concurrency still
bounded by capacity, rank-record snapshots that are cheap and still snapshots, and a status that
pollers can ask for without its per-rank list. The speed itself is a benchmark (bench/coordinator.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.contracts import Checkpoint, WorkerEvent
from services.coordinator import config
from services.coordinator.capacity import Capacity
from services.coordinator.errors import PlanError
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, plan
from services.coordinator.state import Attempt, RankRecord
from services.s3store import S3Store, StoreError
from tests.common import Api, Servers


def _request(world_size: int, **fields: object) -> JobRequest:
    return JobRequest(bucket="bucket", file_limit=10, S3_object_name="model", result_path="out", data_bucket="bucket",
                      data_prefix="p", world_size=world_size, communicator=False, assignment="wrap", **fields)


PARTITIONS = [Partition(f"p/{i}.pt", 1) for i in range(1, 11)]


@pytest.mark.unit
def test_ten_thousand_ranks_are_allowed_by_default_and_concurrency_stays_bounded() -> None:
    settings = config.load({})
    assert settings.max_world_size >= 10_000
    planned = plan(_request(10_000), PARTITIONS, job_id="j", function_timeout_s=900,
                   max_world_size=settings.max_world_size, rendezvous=None,
                   max_concurrency_limit=settings.max_concurrency_limit, capacity=Capacity(400, "reserved"))
    assert len(planned.events) == 10_000 and planned.events[-1].rank == 9_999
    assert planned.max_concurrency == settings.max_concurrency_limit < 10_000  # world size is not concurrency
    with pytest.raises(PlanError, match="at most 10000"):
        plan(_request(10_001), PARTITIONS, job_id="j", function_timeout_s=900, max_world_size=10_000,
             rendezvous=None)


def _full_record() -> RankRecord:
    """A record with every field of every attempt set away from its default."""
    return RankRecord(7, "succeeded", [
        Attempt(1, 10.0, 11.0, "failed", "boom", 0.5, {"duration_ms": 3.0, "init_duration_ms": None}, None, False,
                "lambda"),
        Attempt(2, 12.0, 13.5, "succeeded", None, 0.0, {"duration_ms": 4.0}, {"status": "succeeded", "n": [1, 2]},
                True, "worker")])


@pytest.mark.unit
def test_a_record_snapshot_is_what_asdict_gives_for_every_field() -> None:
    """The hand-written snapshot replaced ``dataclasses.asdict`` for speed: it must miss no field
    (a field added to Attempt and not to its ``to_dict`` fails here)."""
    record = _full_record()
    assert record.to_dict() == dataclasses.asdict(record)
    assert RankRecord.from_dict(record.to_dict()) == record


@pytest.mark.unit
def test_a_record_snapshot_does_not_follow_later_changes() -> None:
    """The journal writes a snapshot later, from its own thread: changes after it must not leak in."""
    record = _full_record()
    snapshot = record.to_dict()
    record.state = "running"
    record.attempts[1].state, record.attempts[1].report = "failed", {"duration_ms": 99.0}
    record.attempts.append(Attempt(3, 20.0))
    assert snapshot == dataclasses.asdict(_full_record())


@pytest.mark.unit
@pytest.mark.parametrize("checkpoint", [None, Checkpoint("models", "model.pt", "ab" * 32)])
@pytest.mark.parametrize("added", [None, True])
def test_an_event_as_data_is_what_asdict_gave(checkpoint: Checkpoint | None, added: bool | None) -> None:
    """``WorkerEvent.to_dict`` is built field by field for speed: the same document as the
    ``dataclasses.asdict`` form it replaced, fields added within the version left out while unset."""
    event = WorkerEvent(job_id="j", rank=3, world_size=8, data_bucket="data", partitions=("p/1.pt", "p/2.pt"),
                        result_bucket="data", result_path="out", attempt=2, model_bucket="models",
                        model_prefix="m", checkpoint=checkpoint, rendezvous="10.0.0.1:10000", comm_name="c",
                        cancel_key="out/c", abort_key="out/a" if added else None, speculative=added)
    reference = dataclasses.asdict(event)
    reference["partitions"] = list(event.partitions)
    for name in ("abort_key", "speculative"):
        if reference[name] is None:
            del reference[name]
    assert event.to_dict() == reference
    assert list(event.to_dict()) == list(reference)  # the same order too: the manifest's bytes stay put


def test_status_without_ranks_leaves_out_the_per_rank_list(api: Api, stack: Servers) -> None:
    job_id = api.submit(stack.payload(world_size=2, communicator=False))
    full = api.wait(job_id)
    status, brief = api.call("GET", f"/jobs/{job_id}?ranks=false")
    assert status == 200 and brief["ranks"] is None, brief
    assert brief["ranks_by_state"] == full["ranks_by_state"] == {"succeeded": 2}
    assert [rank["rank"] for rank in full["ranks"]] == [0, 1]
    status, body = api.call("GET", f"/jobs/{job_id}?ranks=maybe")
    assert status == 422, body


class _DeletingClient:
    """Stands in for boto3's S3 client: records each ``delete_objects`` call, refuses ``refused`` keys."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.calls: list[list[str]] = []
        self.refused = refused

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        keys = [item["Key"] for item in Delete["Objects"]]
        self.calls.append(keys)
        return {"Errors": [{"Key": key, "Code": "AccessDenied", "Message": "no"} for key in keys
                           if key in self.refused]}


@pytest.mark.unit
def test_many_keys_are_deleted_a_thousand_per_request() -> None:
    """Compacting a job's journal deletes its thousands of segments in a few requests, not one each."""
    client = _DeletingClient()
    keys = [f"journal/{i}.json" for i in range(2_345)]
    S3Store(client).delete_many("bucket", keys)
    assert [len(call) for call in client.calls] == [1000, 1000, 345]
    assert [key for call in client.calls for key in call] == keys
    S3Store(client).delete_many("bucket", [])
    assert len(client.calls) == 3


@pytest.mark.unit
def test_a_key_s3_would_not_delete_is_an_error_naming_it() -> None:
    client = _DeletingClient(refused=frozenset({"journal/7.json"}))
    with pytest.raises(StoreError, match=r"journal/7\.json: AccessDenied") as caught:
        S3Store(client).delete_many("bucket", [f"journal/{i}.json" for i in range(10)])
    assert caught.value.code == "AccessDenied" and caught.value.key == "journal/7.json"
