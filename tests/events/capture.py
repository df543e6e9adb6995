"""The worker events in this folder, captured from the code that makes them, and how to make them again.

Valid events come from their producers: the coordinator's planning over the example payload
(``examples/payload.json`` through ``JobRequest`` and ``plan``, as ``Coordinator.submit`` does),
the Step Functions plan step's legacy Map item (``legacy_item`` of its plan, as ``plan_handler``
does) and the deploy's smoke test (``smoke.selftest_events``). Each invalid event is a captured
one with one field spoiled; ``expected.json`` says which field the parser must name for it, and
which mode each valid event parses to.

``python -m tests.events.capture`` writes them all again (after a change to the event);
tests/contracts/test_events.py fails while the stored files differ from what this produces.
Job ids, communicator names and the clock are pinned so that nothing else changes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from tests.common import REPO

FOLDER = Path(__file__).resolve().parent
EXPECTED = FOLDER / "expected.json"
#: What ``current_address`` hands the ranks (an address from the documentation range).
RENDEZVOUS = "203.0.113.10:10000"
#: The worker's timeout by default, in the coordinator's settings and in the deploy's.
FUNCTION_TIMEOUT_S = 900.0
#: The bytes of one legacy 25MB partition (1,278 samples of 20,520 bytes).
PARTITION_BYTES = 1278 * 20520
CHECKPOINT_SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@contextmanager
def _pinned() -> Iterator[None]:
    """``secrets.token_hex`` and the clock fixed, for the duration of one capture."""
    clock = time.struct_time((2026, 11, 30, 12, 0, 0, 0, 334, 0))
    strftime = time.strftime
    with mock.patch("secrets.token_hex", lambda nbytes=32: ("c0ffee" * nbytes)[: 2 * nbytes]), \
            mock.patch("time.gmtime", lambda *_: clock), \
            mock.patch("time.strftime", lambda fmt, when=clock: strftime(fmt, when)):
        yield


def _plan(payload: dict[str, Any], rendezvous: str | None, job_id: str | None = None) -> list[dict[str, Any]]:
    """The events the coordinator plans for ``payload``, over partitions ``1..file_limit`` of its prefix."""
    from services.coordinator.payload import JobRequest
    from services.coordinator.planning import Partition, plan
    from services.coordinator.state import new_job_id

    request = JobRequest.model_validate(payload)
    partitions = [Partition(f"{request.data_prefix}/{index}.pt", PARTITION_BYTES)
                  for index in range(1, request.partitions_wanted + 1)]
    job_id = job_id or new_job_id()
    planned = plan(request, partitions, job_id=job_id, function_timeout_s=FUNCTION_TIMEOUT_S, max_world_size=2048,
                   rendezvous=rendezvous)
    return [event.to_dict() for event in planned.events]


def valid() -> dict[str, Any]:
    """The valid events by file name."""
    from services.contracts import legacy_item, parse_event
    from services.deploy import smoke

    payload = json.loads((REPO / "examples/payload.json").read_text())
    with _pinned():
        native = _plan(payload, RENDEZVOUS)[1]
        checkpoint = {"bucket": payload["bucket"], "key": "Anomaly Detection/Fine_Tune_Model/model.cosmic.safetensors",
                      "sha256": CHECKPOINT_SHA256}
        native_checkpoint = _plan({**payload, "world_size": 2, "checkpoint": checkpoint}, None)[0]
        script = _plan({**payload, "mode": "script"}, RENDEZVOUS)[0]
        # plan_handler: no rendezvous under Step Functions, the job named after its result path
        step_functions = _plan(payload, None, job_id=f"legacy-{payload['result_path']}")
        legacy = legacy_item(parse_event(step_functions[2]))
        selftest = smoke.selftest_events(FUNCTION_TIMEOUT_S, payload["data_bucket"], RENDEZVOUS)[1]
    return {"native.json": native, "native-checkpoint.json": native_checkpoint, "script.json": script,
            "legacy-map-item.json": legacy, "selftest.json": selftest}


def _without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in event.items() if name != key}


def invalid(events: dict[str, Any]) -> dict[str, tuple[Any, str, str]]:
    """Captured events with one field spoiled: ``{file name: (event, field named, what is wrong)}``."""
    native, legacy = events["native.json"], events["legacy-map-item.json"]
    checkpoint = events["native-checkpoint.json"]
    return {
        "invalid-version.json": ({**native, "version": 2}, "version", "a version this worker does not read"),
        "invalid-rank.json": ({**native, "rank": native["world_size"]}, "rank", "rank not below world_size"),
        "invalid-batch-size.json": ({**native, "batch_size": 0}, "batch_size", "batch_size 0"),
        "invalid-unknown-field.json": ({**native, "precision": "bf16"}, "precision", "a field the contract lacks"),
        "invalid-result-path.json": ({**native, "result_path": "../another-job"}, "result_path",
                                     "a result path that climbs out of its prefix"),
        "invalid-comm-name.json": (_without(native, "comm_name"), "comm_name", "a rendezvous without the secret"),
        "invalid-script.json": ({**events["script.json"], "script": None}, "script", "script mode without a script"),
        "invalid-checkpoint.json": ({**checkpoint, "checkpoint": {**checkpoint["checkpoint"], "sha256": "9F86D081"}},
                                    "checkpoint", "a sha256 that is not 64 lowercase hex digits"),
        "invalid-legacy-rank.json": (_without(legacy, "RANK"), "RANK", "a legacy Map item without RANK"),
        "invalid-legacy-data-bucket.json": ({**legacy, "DATA_BUCKET": "Cosmic_Data"}, "data_bucket",
                                            "a legacy item whose bucket is not an S3 bucket name"),
        "invalid-not-an-object.json": ([native], "event", "a list of events, not one"),
    }


def capture() -> tuple[dict[str, Any], dict[str, Any]]:
    """Every event file's content by name, and ``expected.json``'s."""
    events = valid()
    expected: dict[str, Any] = {name: {"mode": event.get("mode", "native")} for name, event in events.items()}
    for name, (event, field, why) in invalid(events).items():
        events[name] = event
        expected[name] = {"field": field, "why": why}
    return events, dict(sorted(expected.items()))


def stored() -> tuple[dict[str, Any], dict[str, Any]]:
    """What this folder holds, in the same shape as :func:`capture`."""
    events = {path.name: json.loads(path.read_text()) for path in sorted(FOLDER.glob("*.json")) if path != EXPECTED}
    return events, json.loads(EXPECTED.read_text())


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def main() -> None:
    events, expected = capture()
    for path in FOLDER.glob("*.json"):
        path.unlink()
    for name, event in events.items():
        (FOLDER / name).write_text(_dump(event))
    EXPECTED.write_text(_dump(expected))
    print(f"wrote {len(events)} events and {EXPECTED.name} to {FOLDER.relative_to(REPO)}")


if __name__ == "__main__":
    main()
