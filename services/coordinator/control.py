"""The job's markers, the coordinator's way to speak to running workers: ``cancel`` and ``abort``.

Both live under the job's result path (:func:`services.keys.control_key`), the one prefix the
worker role may read on AWS besides its inputs. ``cancel``: stop between batches and write nothing
further. ``abort``: a rank failed, so the collective cannot complete; ranks in it leave at once
and ranks not yet in it skip it. A marker is a small JSON document saying why and when.
"""

from __future__ import annotations

import time
from typing import Any

from services.coordinator.manifest import Manifest
from services.s3store import S3Store


def write_marker(store: S3Store, manifest: Manifest, marker: str, *, reason: str, **details: Any) -> str | None:
    """Write the job's ``marker`` (``cancel`` or ``abort``) where its workers look; returns its key.

    The job's events name the keys (planning puts them under the result path); a job planned by
    an older coordinator has its cancel marker elsewhere and no abort marker: None, nothing written.
    """
    event = manifest.events[0]  # every rank's event names the same markers
    key = event.cancel_key if marker == "cancel" else event.abort_key
    if key is None:
        return None
    store.put_json(event.result_bucket, key,
                   {"job_id": manifest.job_id, "marker": marker, "reason": reason, "at": time.time(), **details})
    return key
