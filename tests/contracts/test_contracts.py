"""The worker event contract: both forms, every validation, and no heavy imports."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from services.contracts import SCHEMA_VERSION, EventError, WorkerEvent, WorkerResult, parse_event

VALID: dict[str, Any] = {
    "version": SCHEMA_VERSION, "job_id": "j-1", "rank": 1, "world_size": 4, "data_bucket": "cosmicai-data",
    "partitions": ["100MB/2.pt", "100MB/3.pt"], "result_bucket": "cosmicai-data",
    "result_path": "result-partition-100MB/1GB/1", "batch_size": 512,
}

LEGACY_ITEM = {
    "S3_BUCKET": "cosmicai-data", "S3_OBJECT_NAME": "Anomaly Detection",
    "SCRIPT": "/tmp/Anomaly Detection/Inference/inference.py", "S3_OBJECT_TYPE": "folder", "WORLD_SIZE": "3",
    "RANK": "2", "DATA_BUCKET": "cosmicai-data", "DATA_PREFIX": "100MB", "DATA_PATH": ["5.pt", "6.pt"],
    "RESULT_PATH": "result-partition-100MB/1GB/1", "BATCH_SIZE": 512,
}


def test_versioned_event_round_trips() -> None:
    event = parse_event(VALID)
    assert event.partitions == ("100MB/2.pt", "100MB/3.pt") and event.mode == "native" and event.attempt == 1
    assert parse_event(event.to_dict()) == event


def test_legacy_map_item_is_converted() -> None:
    event = parse_event(LEGACY_ITEM)
    assert (event.rank, event.world_size, event.mode) == (2, 3, "native"), "a script field decides nothing"
    assert event.partitions == ("100MB/5.pt", "100MB/6.pt")
    assert event.model_bucket == "cosmicai-data" and event.model_prefix == "Anomaly Detection"
    assert event.result_bucket == "cosmicai-data" and event.result_path == "result-partition-100MB/1GB/1"
    single = parse_event({**LEGACY_ITEM, "DATA_PATH": "100MB/7.pt"})
    assert single.partitions == ("100MB/7.pt",)


@pytest.mark.parametrize(("change", "field"), [
    ({"version": 2}, "version"),
    ({"rank": 4}, "rank"),
    ({"rank": "1"}, "rank"),
    ({"world_size": 0}, "world_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"mode": "turbo"}, "mode"),
    ({"data_bucket": "Not_A_Bucket"}, "data_bucket"),
    ({"result_path": "../elsewhere"}, "result_path"),
    ({"result_path": "/abs"}, "result_path"),
    ({"partitions": [1, 2]}, "partitions"),
    ({"rendezvous": "host-without-port"}, "rendezvous"),
    ({"rendezvous": "rv.example.org:10000"}, "comm_name"),
    ({"checkpoint": {"bucket": "b", "key": "k", "sha256": "xyz"}}, "checkpoint"),
    ({"mode": "script"}, "script"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_events_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event({**VALID, **change})
    assert caught.value.field == field


@pytest.mark.parametrize("missing", ["job_id", "rank", "partitions", "result_path"])
def test_required_fields(missing: str) -> None:
    with pytest.raises(EventError, match=missing):
        parse_event({k: v for k, v in VALID.items() if k != missing})


def test_legacy_item_missing_a_key() -> None:
    with pytest.raises(EventError, match="RANK"):
        parse_event({k: v for k, v in LEGACY_ITEM.items() if k != "RANK"})


def test_not_an_object() -> None:
    with pytest.raises(EventError, match="JSON object"):
        parse_event(["not", "an", "event"])


def test_result_is_json_able() -> None:
    result = WorkerResult(job_id="j", rank=0, attempt=1, status="succeeded", timings_s={"infer": 1.5})
    assert result.to_dict()["timings_s"] == {"infer": 1.5} and result.to_dict()["version"] == SCHEMA_VERSION
    assert isinstance(parse_event(VALID), WorkerEvent)


@pytest.mark.integration
def test_contract_imports_neither_torch_nor_boto3() -> None:
    code = "import sys, services.contracts; print(sorted(m for m in ('torch', 'boto3', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
