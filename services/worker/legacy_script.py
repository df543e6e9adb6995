"""``script`` mode: the legacy executor, done right.

Like the legacy executor it downloads the model folder ``S3_OBJECT_NAME`` to the scratch folder
(``/tmp`` on Lambda) and runs ``SCRIPT`` with the Map item's values as environment variables.
Unlike it, the listing is paginated, files whose ETag has not changed are not downloaded again
on a warm start, the script must lie inside the downloaded folder, it runs under a deadline, and
a non-zero exit is a function error carrying the tail of its stderr (a crashed script no longer
counts as a success).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from services.contracts import WorkerEvent, WorkerResult, legacy_item
from services.keys import result_key
from services.logs import event as log_event
from services.s3store import S3Store
from services.worker.errors import ScriptFailed

log = logging.getLogger("cosmic.worker.script")
TAIL_BYTES = 2000
_ETAGS = ".cosmic-etags.json"


def sync_folder(store: S3Store, bucket: str, prefix: str, root: Path) -> tuple[Path, int]:
    """Mirror ``s3://bucket/prefix/`` under ``root/prefix``; returns the folder and files downloaded."""
    prefix = prefix.strip("/")
    folder = (root / prefix).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / _ETAGS
    known: dict[str, str] = json.loads(record_path.read_text()) if record_path.exists() else {}
    downloaded = 0
    for key, etag, _ in store.objects(bucket, prefix + "/"):
        relative = key[len(prefix) + 1:]
        if not relative or relative.endswith("/"):
            continue  # the console's "folder" placeholder objects
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):
            raise ScriptFailed(f"refusing s3://{bucket}/{key}: it would land outside {folder}")
        if known.get(relative) == etag and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        store.download(bucket, key, str(target))
        known[relative] = etag
        downloaded += 1
    record_path.write_text(json.dumps(known))
    return folder, downloaded


def legacy_environment(job: WorkerEvent) -> dict[str, str]:
    """The Map item's values, as the legacy executor exported them (lists as JSON)."""
    return {key: json.dumps(value) if isinstance(value, list) else str(value)
            for key, value in legacy_item(job).items()}


def run_script(job: WorkerEvent, store: S3Store, scratch: Path, timeout_s: float) -> WorkerResult:
    assert job.model_bucket and job.model_prefix and job.script  # parse_event checked script mode's fields
    started = time.perf_counter()
    folder, downloaded = sync_folder(store, job.model_bucket, job.model_prefix, scratch)
    download_s = time.perf_counter() - started
    script = Path(job.script) if Path(job.script).is_absolute() else folder / job.script
    script = script.resolve()
    if not script.is_relative_to(folder) or not script.is_file():
        raise ScriptFailed(f"script {job.script!r} is not a file inside the downloaded folder {folder}",
                           script=job.script)
    log_event(log, "script_start", script=str(script), downloaded=downloaded, download_s=round(download_s, 3))
    started = time.perf_counter()
    try:
        finished = subprocess.run([sys.executable, str(script)], cwd=script.parent, capture_output=True,
                                  env={**os.environ, **legacy_environment(job)}, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ScriptFailed(f"{job.script} ran over its {timeout_s:.0f} s deadline; "
                           f"stderr tail: {_tail(exc.stderr or b'')}", script=job.script) from None
    run_s = time.perf_counter() - started
    sys.stdout.write(finished.stdout.decode(errors="replace")[-TAIL_BYTES:])  # into the invocation's log
    if finished.returncode != 0:
        raise ScriptFailed(f"{job.script} exited with status {finished.returncode}; "
                           f"stderr tail: {_tail(finished.stderr)}", script=job.script)
    written = store.etag(job.result_bucket, result_key(job.result_path, job.rank))
    return WorkerResult(job_id=job.job_id, rank=job.rank, attempt=job.attempt, status="succeeded",
                        result_keys=[result_key(job.result_path, job.rank)] if written else [],
                        partitions_done=list(job.partitions),
                        timings_s={"download": round(download_s, 4), "script": round(run_s, 4)},
                        checks={"exit_code": 0, "files_downloaded": downloaded,
                                "stdout_tail": finished.stdout.decode(errors="replace")[-500:]})


def _tail(stderr: bytes) -> str:
    return stderr.decode(errors="replace")[-TAIL_BYTES:].strip() or "(empty)"
