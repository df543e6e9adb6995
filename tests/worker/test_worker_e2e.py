"""The real handler in the local Lambda runtime's sandboxes, invoked through boto3, data in real S3."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("awslambdaric")
from tests.local.test_runtime import client
from tests.processes import runtime_process
from tests.worker.conftest import World


@pytest.fixture(scope="module")
def runtime(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The runtime with 2 sandboxes running services.worker.handler (the default handler)."""
    folder = tmp_path_factory.mktemp("worker-runtime")
    with runtime_process(folder / "runtime.log", "--sandboxes", "2", "--timeout", "120",
                         env={"COSMIC_WORKER_SCRATCH_DIR": str(folder / "scratch")}) as endpoint:
        yield endpoint


def invoke(endpoint: str, payload: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    response = client(endpoint).invoke(FunctionName="cosmic-worker", Payload=json.dumps(payload), LogType="Tail")
    return response, json.loads(response["Payload"].read())


def test_two_ranks_infer_and_summarise_together(runtime: str, world: World, start_server) -> None:
    server = start_server()
    base = world.event(world_size=2, rendezvous=f"127.0.0.1:{server.port}", comm_name="e2e-" + os.urandom(8).hex())
    events = [{**base, "rank": rank, "partitions": [world.partitions[rank]]} for rank in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda event: invoke(runtime, event), events))
    for rank, (response, body) in enumerate(answers):
        assert "FunctionError" not in response, body
        assert body["rank"] == rank and body["status"] == "succeeded" and body["collective"] == "done"
        assert body["num_samples"] == 48 and body["cold_start"] is True
        log = base64.b64decode(response["LogResult"]).decode()
        assert re.search(r"REPORT RequestId: \S+\s+Duration: [\d.]+ ms.*Max Memory Used: \d+ MB", log), log
        assert "invocation_done" in log
    summary = json.loads(world.store.get(world.bucket, f"{base['result_path']}/summary_collective.json").data)
    assert summary["num_samples"] == 96 and set(summary["accuracy"]) >= {"mae", "nmad", "r2"}


def test_bad_event_is_a_function_error_naming_the_field(runtime: str, world: World) -> None:
    response, body = invoke(runtime, world.event(batch_size=0))
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "EventError" and "batch_size" in body["errorMessage"]


def test_warm_sandbox_keeps_the_model(runtime: str, world: World) -> None:
    colds = [invoke(runtime, world.event())[1]["cold_start"] for _ in range(3)]
    assert colds.count(False) >= 1, "with 2 sandboxes, 3 invocations reuse at least one loaded model"
