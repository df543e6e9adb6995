"""An S3 store that waits out S3 outages, for the job threads: their writes must land, not crash the job.

A running job writes its journal, manifest, compacted ranks and summary from its own threads. When
S3 gives no answer at all (connection refused, a timeout: :attr:`StoreError.unanswered`) those
calls are retried here with exponential backoff and full jitter until S3 answers again or
``patience_s`` has passed (then the error is raised as before); any answer from S3, even an error,
is returned or raised at once. The API's own requests use the plain store: they answer 503 at once
instead of waiting (:class:`.errors.DependencyUnavailable`).

Listings are read whole inside one try, so a retry restarts them instead of yielding a key twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from services.coordinator.backoff import full_jitter
from services.logs import event as log_event
from services.s3store import Blob, S3Store, StoreError

log = logging.getLogger("cosmic.coordinator.durable")
T = TypeVar("T")
#: First and longest pause between retries, seconds.
BASE_DELAY_S = 0.5
MAX_DELAY_S = 10.0


class PatientStore(S3Store):
    """:class:`S3Store` whose calls outlast S3 giving no answer (up to ``patience_s`` each)."""

    def __init__(self, store: S3Store, patience_s: float, base_delay_s: float = BASE_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S) -> None:
        super().__init__(store.client)
        self.patience_s, self.base_delay_s, self.max_delay_s = patience_s, base_delay_s, max_delay_s

    def _patient(self, call: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.patience_s
        retry = 0
        while True:
            try:
                result = call()
            except StoreError as exc:
                if not exc.unanswered or time.monotonic() >= deadline:
                    raise
                delay = full_jitter(retry, self.base_delay_s, self.max_delay_s)
                if retry == 0 or retry % 10 == 0:  # a line when it starts, then one in ten
                    log_event(log, "s3_unanswered_retrying", logging.WARNING, endpoint=exc.endpoint,
                              bucket=exc.bucket, key=exc.key, retry=retry + 1, error=str(exc)[:200])
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                retry += 1
                continue
            if retry:
                log_event(log, "s3_answers_again", retries=retry)
            return result

    def objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, str, int]]:
        return iter(self._patient(lambda: list(super(PatientStore, self).objects(bucket, prefix))))

    def get(self, bucket: str, key: str) -> Blob:
        return self._patient(lambda: super(PatientStore, self).get(bucket, key))

    def etag(self, bucket: str, key: str) -> str | None:
        return self._patient(lambda: super(PatientStore, self).etag(bucket, key))

    def download(self, bucket: str, key: str, path: str) -> None:
        self._patient(lambda: super(PatientStore, self).download(bucket, key, path))

    def put(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._patient(lambda: super(PatientStore, self).put(bucket, key, data, content_type))

    def put_new(self, bucket: str, key: str, data: bytes, content_type: str = "application/json") -> bool:
        return self._patient(lambda: super(PatientStore, self).put_new(bucket, key, data, content_type))

    def get_json(self, bucket: str, key: str) -> Any | None:
        return self._patient(lambda: super(PatientStore, self).get_json(bucket, key))

    def folders(self, bucket: str, prefix: str = "") -> list[str]:
        return self._patient(lambda: super(PatientStore, self).folders(bucket, prefix))

    def delete(self, bucket: str, key: str) -> None:
        self._patient(lambda: super(PatientStore, self).delete(bucket, key))

    def delete_many(self, bucket: str, keys: list[str]) -> None:
        self._patient(lambda: super(PatientStore, self).delete_many(bucket, keys))
