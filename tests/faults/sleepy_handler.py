"""A worker that touches no S3: it sleeps ``COSMIC_TEST_SLEEP_S`` and answers success.

For the tests that take S3 away from the coordinator mid-job: the ranks must not need S3
themselves, so what is tested is the coordinator's side alone (its journal, manifest and summary
writes, and its API) while S3 is gone.
"""

from __future__ import annotations

import os
import time
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(float(os.environ.get("COSMIC_TEST_SLEEP_S", "1")))
    return {"status": "succeeded", "job_id": event.get("job_id"), "rank": event.get("rank"),
            "attempt": event.get("attempt")}
