"""Planning and summary as Lambda handlers, for teams who keep Step Functions (see ``infra/``).

The state machine runs plan -> Distributed Map over the rank items -> summarize, and these two
handlers are the coordinator's own planning and summary code. ``plan`` writes the legacy Map
items (the worker accepts them as they are) to S3 as one JSON array for the Map's ItemReader;
``summarize`` writes ``combined_data.json`` and ``summary.json`` as the coordinator does. Under
Step Functions no REPORT lines reach us, so the summary's cost covers requests only; the billed
duration is in CloudWatch.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pydantic import ValidationError

from services import logs
from services.contracts import legacy_item
from services.coordinator import config, finish
from services.coordinator.errors import BadPayload
from services.coordinator.payload import JobRequest
from services.coordinator.planning import choose_partitions, plan
from services.coordinator.pricing import load_prices
from services.coordinator.state import RankRecord, cancel_key
from services.logs import event as log_event
from services.s3store import S3Store

log = logging.getLogger("cosmic.coordinator.lambda")


def plan_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Plan a job from the users' payload; returns where the items are and what ``summarize`` needs."""
    logs.configure()
    try:
        request = JobRequest.model_validate(event)
    except ValidationError as exc:
        problems = [(".".join(map(str, e["loc"])) or "payload", e["msg"]) for e in exc.errors()]
        (field_name, reason), others = problems[0], problems[1:]
        if others:
            reason += f" (and {'; '.join(f'{name}: {msg}' for name, msg in others)})"
        raise BadPayload(field_name, reason) from None
    settings = config.load()
    store = S3Store()
    partitions = choose_partitions(store, request)
    job_id = f"legacy-{request.result_path}"  # what the worker calls a job it got as a legacy item
    job_plan = plan(request, partitions, job_id=job_id, function_timeout_s=settings.worker_timeout,
                    max_world_size=settings.max_world_size, rendezvous=None, cancel_key=cancel_key(job_id))
    items = [legacy_item(e) for e in job_plan.events]
    bucket = settings.state_bucket or request.bucket
    items_key = f"jobs/{job_id.replace('/', '_')}/items.json"
    store.put(bucket, items_key, json.dumps(items).encode(), "application/json")
    log_event(log, "planned", job_id=job_id, world_size=len(items), partitions=len(partitions))
    return {"job": {"job_id": job_id, "submitted_at": time.time(), "communicator": False,
                    **job_plan.manifest_facts(request, request.function or settings.worker_function),
                    "events": [{"partitions": list(e.partitions)} for e in job_plan.events]},
            "items": {"Bucket": bucket, "Key": items_key}, "max_concurrency": job_plan.max_concurrency}


def summarize_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Summarise the job ``plan`` described (``event["job"]``) from the ranks' results in S3."""
    logs.configure()
    manifest = event.get("job")
    if not isinstance(manifest, dict) or "request" not in manifest:
        raise BadPayload("job", "summarize needs the plan step's output here")
    ranks = {rank: RankRecord(rank, state="succeeded") for rank in range(int(manifest["world_size"]))}
    document = finish.write_summary(S3Store(), load_prices(), manifest, ranks)
    return {"summary": manifest["summary_key"], "samples": document.get("samples"),
            "accuracy": document.get("accuracy")}
