"""Speculative backups against the real runtime and workers: a straggling rank is overtaken, the
straggler stops as superseded having written nothing, and both attempts are billed."""

from __future__ import annotations

import secrets
import time

from tests.common import Api, Servers
from tests.coordinator.flaky_handler import STRAGGLER_S


def test_a_straggler_is_overtaken_by_its_backup_and_both_are_billed(api: Api, stack: Servers) -> None:
    payload = stack.payload(file_limit="4", world_size=4, communicator=False, speculate=True, speculate_multiple=1.5,
                            result_path=f"results/straggler-{secrets.token_hex(4)}")
    started = time.monotonic()
    job_id = api.submit(payload)
    final = api.wait(job_id, timeout=STRAGGLER_S + 60)
    took = time.monotonic() - started
    assert final["state"] == "succeeded", final
    events = [line for line in api.log.read_text().splitlines() if "backup_" in line or "rank_attempt" in line]
    assert took < STRAGGLER_S * 0.6, f"the job took {took:.1f} s: the straggler was waited for: {events}"
    straggler = final["ranks"][1]
    assert [a["state"] for a in straggler["attempts"]] == ["superseded", "succeeded"], straggler
    assert all(a["duration_ms"] is not None for a in straggler["attempts"]), "the superseded attempt is billed"
    for rank in (0, 2, 3):
        assert [a["state"] for a in final["ranks"][rank]["attempts"]] == ["succeeded"]
    path = payload["result_path"]
    assert stack.store.get_json(stack.bucket, f"{path}/1.json")["attempt"] == 2, "the backup's results"
    summary = stack.store.get_json(stack.bucket, f"{path}/summary.json")
    assert summary["invocations"]["attempts"] == 5 and summary["invocations"]["superseded"] == 1
    assert summary["samples"] == sum(doc["num_samples"] for doc in
                                     (stack.store.get_json(stack.bucket, f"{path}/{rank}.json") for rank in range(4)))


def test_speculate_with_the_communicator_asked_for_is_422(api: Api, stack: Servers) -> None:
    status, body = api.call("POST", "/jobs", stack.payload(speculate=True, communicator=True))
    assert status == 422 and "speculate" in str(body), body
