"""Readiness (``/readyz``): can the coordinator reach S3 and Lambda right now?

``/healthz`` stays liveness (the process answers, whatever its dependencies do: restarting it
would not bring S3 back). ``/readyz`` calls each dependency once, at the same time, with short
timeouts and no retries, so it answers within a few seconds whatever they do: S3 with HeadBucket
on the state bucket (ListBuckets when each payload's bucket holds its own state), Lambda with
GetAccountSettings (granted to the coordinator's role, answered by the local runtime). Any answer
from a service but a 5xx, or a state bucket that does not exist, means it is up: an AccessDenied
still proves the endpoint answers, and is shown.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.s3store import s3_client

#: Seconds each probe may take to connect and to read: readiness is asked often, by orchestrators.
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One dependency's answer: ``ok``, the endpoint called, how long it took, and what went wrong (or the
    error code it answered, when that still means it is up)."""

    ok: bool
    endpoint: str
    call: str
    ms: float
    error: str | None = None


class Readiness:
    """Probes S3 and Lambda with clients of their own (short timeouts, one attempt each)."""

    def __init__(self, state_bucket: str = "") -> None:
        self.state_bucket = state_bucket
        self.s3 = s3_client(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, attempts=1, pool=2)
        self.lambda_client = boto3.client("lambda", config=Config(
            retries={"total_max_attempts": 1}, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S))

    def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, document)``: every dependency's :class:`Check`, under ``checks``."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz") as pool:
            s3 = pool.submit(self._s3)
            lambda_ = pool.submit(self._lambda)
            checks = {"s3": s3.result(), "lambda": lambda_.result()}
        ready = all(check.ok for check in checks.values())
        return ready, {"status": "ready" if ready else "unavailable",
                       "checks": {name: asdict(check) for name, check in checks.items()}}

    def _s3(self) -> Check:
        if self.state_bucket:
            return _probe(self.s3, f"HeadBucket {self.state_bucket}",
                          lambda: self.s3.head_bucket(Bucket=self.state_bucket), missing_is_down=True)
        return _probe(self.s3, "ListBuckets", self.s3.list_buckets)

    def _lambda(self) -> Check:
        return _probe(self.lambda_client, "GetAccountSettings", self.lambda_client.get_account_settings)


def _probe(client: Any, call: str, request: Any, missing_is_down: bool = False) -> Check:
    endpoint = str(client.meta.endpoint_url)
    started = time.monotonic()

    def took() -> float:
        return round((time.monotonic() - started) * 1000, 1)

    try:
        request()
    except ClientError as exc:  # the service answered: up, unless it says it is not, or the bucket is gone
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = exc.response.get("Error", {}).get("Code") or str(status)
        down = status >= 500 or (missing_is_down and status == 404)
        return Check(not down, endpoint, call, took(), f"answered {code}")
    except BotoCoreError as exc:
        return Check(False, endpoint, call, took(), f"{type(exc).__name__}: {exc}"[:300])
    return Check(True, endpoint, call, took())
