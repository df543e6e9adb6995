"""The communicator never decides a job's fate: asking for it beyond the function's capacity is a 422.
Queueing for capacity and throttling are faults: ``tests/faults/test_throttling.py``."""

from __future__ import annotations

import json

from tests.common import Api, Servers
from tests.coordinator.conftest import PARTITIONS, SANDBOXES


def test_asking_for_the_communicator_beyond_the_capacity_is_422_naming_both_numbers(api: Api, stack: Servers) -> None:
    status, body = api.call("POST", "/jobs", stack.payload(file_limit=str(PARTITIONS), communicator=True))
    assert status == 422, body
    detail = json.dumps(body["detail"])
    assert "communicator" in detail and f"all {PARTITIONS} ranks" in detail and f"at most {SANDBOXES}" in detail, body
