"""The Step Functions path: plan -> the worker on each legacy Map item -> summarize, on real servers."""

from __future__ import annotations

import json

import boto3
import pytest

from services.contracts import legacy_item, parse_event
from services.coordinator.lambda_handlers import BadPayload, plan_handler, summarize_handler
from services.coordinator.manifest import read_manifest
from tests.common import Servers


def test_plan_items_drive_the_worker_and_summarize_reads_them(stack: Servers) -> None:
    payload = stack.payload(file_limit="4", world_size=2, result_path="results/stepfunctions")
    planned = plan_handler(payload, None)
    items = json.loads(stack.store.get(planned["items"]["Bucket"], planned["items"]["Key"]).data)
    assert [item["RANK"] for item in items] == ["0", "1"] and items[1]["DATA_PATH"] == ["3.pt", "4.pt"]
    lam = boto3.client("lambda", endpoint_url=stack.lambda_endpoint)
    for item in items:  # what the Distributed Map does with each item
        response = lam.invoke(FunctionName="cosmic-worker", Payload=json.dumps(item))
        assert "FunctionError" not in response, response["Payload"].read()
    manifest = read_manifest(stack.store, planned["job"]["bucket"], planned["job"]["key"])
    assert manifest is not None and manifest.world_size == 2 and not manifest.communicator
    out = summarize_handler(json.loads(json.dumps(planned)), None)  # state passes through JSON
    assert out["samples"] == 4 * 48 and out["accuracy"]["count"] == 4 * 48
    assert out["summary"] == f"s3://{stack.bucket}/results/stepfunctions/summary.json"
    combined = json.loads(stack.store.get(stack.bucket, "results/stepfunctions/combined_data.json").data)
    assert [doc["rank"] for doc in combined] == [0, 1]


def test_plan_refuses_a_bad_payload_naming_fields(stack: Servers) -> None:
    with pytest.raises(BadPayload, match="file_limit"):
        plan_handler(stack.payload(file_limit="many"), None)


def test_summarize_refuses_a_state_without_the_manifest_location() -> None:
    with pytest.raises(BadPayload, match="'job'"):
        summarize_handler({"job": {"job_id": "legacy-results/x", "world_size": 2}}, None)


def test_legacy_item_round_trips_through_the_worker_contract(stack: Servers) -> None:
    planned = plan_handler(stack.payload(file_limit="3", world_size=3, result_path="results/roundtrip"), None)
    items = json.loads(stack.store.get(planned["items"]["Bucket"], planned["items"]["Key"]).data)
    event = parse_event(items[2])
    assert event.partitions == ("tiny/3.pt",) and event.rank == 2 and event.world_size == 3
    assert legacy_item(event) == items[2]
