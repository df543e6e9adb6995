"""Planning and summary as Lambda handlers, for teams who keep Step Functions (see ``infra/``).

The state machine runs plan -> Distributed Map over the rank items -> summarize, and these two
handlers are the coordinator's own planning and summary code. ``plan`` writes the legacy Map
items (the worker accepts them as they are) to S3 as one JSON array for the Map's ItemReader, and
the job's :class:`~.manifest.Manifest` beside them; ``summarize`` reads that manifest and writes
``combined_data.json`` and ``summary.json`` as the coordinator does. The state carries only where
the manifest is: with one event per rank it outgrows Step Functions' 256 KiB state long before
``COSMIC_MAX_WORLD_SIZE``. Under Step Functions no REPORT lines reach us, so the summary's cost
covers requests only; the billed duration is in CloudWatch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from services import logs
from services.contracts import RankState, legacy_item
from services.coordinator import config, finish
from services.coordinator.errors import BadPayload
from services.coordinator.manifest import Manifest, read_manifest, write_manifest
from services.coordinator.payload import JobRequest
from services.coordinator.planning import choose_partitions, plan
from services.coordinator.pricing import load_prices
from services.coordinator.state import JOBS, RankRecord
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
    job_plan = plan(request, partitions, job_id=job_id, function_timeout_s=settings.worker.timeout,
                    max_world_size=settings.max_world_size, rendezvous=None)
    # the Map runs each item once (its retries are for Lambda's service errors only)
    manifest = Manifest.from_plan(job_id, request, job_plan, function=request.function or settings.worker.function,
                                  max_attempts=1)
    items = [legacy_item(e) for e in job_plan.events]
    bucket = settings.state_bucket or request.bucket
    folder = f"{JOBS}{job_id.replace('/', '_')}"
    store.put(bucket, f"{folder}/items.json", json.dumps(items).encode(), "application/json")
    # not manifest.json: the coordinator would list this job, which it does not run, as its own
    write_manifest(store, bucket, f"{folder}/plan-manifest.json", manifest)
    log_event(log, "planned", job_id=job_id, world_size=len(items), partitions=len(partitions))
    return {"job": {"job_id": job_id, "bucket": bucket, "key": f"{folder}/plan-manifest.json"},
            "items": {"Bucket": bucket, "Key": f"{folder}/items.json"}, "max_concurrency": job_plan.max_concurrency}


def summarize_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Summarise the job ``plan`` planned (its manifest is where ``event["job"]`` says) from the ranks' results."""
    logs.configure()
    where = event.get("job")
    if not isinstance(where, dict) or not all(isinstance(where.get(name), str) for name in ("bucket", "key")):
        raise BadPayload("job", "summarize needs the plan step's output under 'job': {job_id, bucket, key}")
    store = S3Store()
    manifest = read_manifest(store, where["bucket"], where["key"])
    if manifest is None:
        raise BadPayload("job", f"no job manifest at s3://{where['bucket']}/{where['key']}")
    ranks = {rank: RankRecord(rank, state=RankState.SUCCEEDED) for rank in range(manifest.world_size)}
    written = finish.write_summary(store, load_prices(), manifest, ranks)
    return {"summary": written.key, "samples": written.document.get("samples"),
            "accuracy": written.document.get("accuracy")}
