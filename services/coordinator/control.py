"""The job's markers, the coordinator's way to speak to running workers: ``cancel`` and ``abort``.

Both live under the job's result path (:func:`services.contracts.control_key`), the one prefix the
worker role may read on AWS besides its inputs. ``cancel``: stop between batches and write nothing
further. ``abort``: a rank failed, so the collective cannot complete; ranks in it leave at once
and ranks not yet in it skip it. A marker is a small JSON document saying why and when.
"""

from __future__ import annotations

import time
from typing import Any

from services.contracts import control_key
from services.coordinator.manifest import Manifest
from services.s3store import S3Store


def write_marker(store: S3Store, manifest: Manifest, marker: str, *, reason: str, **details: Any) -> str:
    """Write the job's ``marker`` (``cancel`` or ``abort``); returns its key."""
    request = manifest.request
    key = control_key(request.result_path, manifest.job_id, marker)
    store.put_json(request.data_bucket, key, {"job_id": manifest.job_id, "marker": marker, "reason": reason,
                                              "at": time.time(), **details})
    return key
