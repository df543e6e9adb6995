"""Exceptions of the coordinator. Each class carries ``http_status``, the answer the API gives it
(one handler in :mod:`.app` reads it), and each error the fields that explain it.

::

    CoordinatorError           anything the coordinator refuses or cannot do: 500 unless a class says otherwise
    ├── NotFound               404: what the request names does not exist (also a LookupError)
    │   ├── JobNotFound        no job has this ``job_id``
    │   ├── ReportNotFound     the job ended without a summary; ``reason`` says why
    │   ├── PlotNotFound       no ``plot`` of that name, or the job has nothing for it to draw
    │   └── RankNotFound       the job has no ``rank`` of that number
    ├── JobConflict            409: another job (``holder``) writes to the result path, or the job's ``state``
    │                          forbids the action
    ├── StorageFailed          502: S3 refused or failed a call; ``code``, ``bucket``, ``key`` from the StoreError
    │   └── UnknownBucket      422: S3 says NoSuchBucket, a bucket the request names does not exist
    ├── DependencyUnavailable  503: S3 or Lambda gave no answer (refused, timed out); ``service``, ``endpoint``
    ├── PlanError              422: the request cannot be planned; ``field``, ``reason`` (also a FieldError)
    ├── FilterError            400: a dashboard list filter that cannot be used (also a ValueError)
    ├── BadPayload             the Step Functions input is not a job payload; ``field`` (also a FieldError)
    ├── ManifestError          a job manifest in S3 cannot be read; ``field`` is its path (also a FieldError)
    ├── PricesError            the price file cannot be used; ``path``, ``field`` (also a FieldError)
    └── CalibrationError       the planner's calibration file cannot be used; ``path``, ``field`` (also a FieldError)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.contracts import FieldError

if TYPE_CHECKING:  # the report's readers (pricing, summary) run where boto3 may not be installed
    from services.s3store import StoreError


class CoordinatorError(Exception):
    """Something the coordinator refuses or cannot do. ``http_status`` is what the API answers."""

    http_status = 500

    @property
    def detail(self) -> Any:
        """The API's ``detail`` for this error: the message, unless a class shapes it otherwise."""
        return str(self)


class NotFound(CoordinatorError, LookupError):
    """What the request names does not exist; ``job_id`` is the job it was asked of."""

    http_status = 404

    def __init__(self, message: str, *, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobNotFound(NotFound):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no such job: {job_id}", job_id=job_id)


class ReportNotFound(NotFound):
    """The job ended, but its summary is not in S3; ``reason`` is what the job recorded, if anything."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"{job_id} has no summary ({reason})", job_id=job_id)
        self.reason = reason


class PlotNotFound(NotFound):
    """No plot of that name, or the job has nothing for that plot to draw."""

    def __init__(self, message: str, *, job_id: str, plot: str) -> None:
        super().__init__(message, job_id=job_id)
        self.plot = plot


class RankNotFound(NotFound):
    """The job has no rank of that number (ranks are ``0..world_size-1``)."""

    def __init__(self, message: str, *, job_id: str, rank: int) -> None:
        super().__init__(message, job_id=job_id)
        self.rank = rank


class JobConflict(CoordinatorError):
    """A second active job on a result path (``holder`` is the job writing there), or an action the
    job's ``state`` forbids."""

    http_status = 409

    def __init__(self, message: str, *, job_id: str, state: str | None = None, holder: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state
        self.holder = holder


class StorageFailed(CoordinatorError):
    """An S3 call a request needed failed; ``code``, ``bucket`` and ``key`` are the StoreError's."""

    http_status = 502

    def __init__(self, message: str, *, code: str | None, bucket: str, key: str) -> None:
        super().__init__(message)
        self.code = code
        self.bucket = bucket
        self.key = key

    @staticmethod
    def from_store(exc: StoreError) -> StorageFailed:
        """The coordinator's error for a StoreError, chosen by its S3 code."""
        kind = UnknownBucket if exc.code == "NoSuchBucket" else StorageFailed
        return kind(str(exc), code=exc.code, bucket=exc.bucket, key=exc.key)


class DependencyUnavailable(CoordinatorError):
    """A service the coordinator depends on gave no answer at all: connection refused, a timeout, no
    route. ``service`` is ``s3`` or ``lambda``, ``endpoint`` the URL called, ``error`` the transport's
    error, short. A 503: nothing is wrong with the request, and it may work once the service is back."""

    http_status = 503
    #: The longest transport error quoted in the message: a 503 names the endpoint, it does not dump.
    MAX_ERROR = 300

    def __init__(self, service: str, endpoint: str, error: str) -> None:
        short = error if len(error) <= self.MAX_ERROR else error[:self.MAX_ERROR] + "..."
        super().__init__(f"{service} at {endpoint} is unavailable: {short}")
        self.service = service
        self.endpoint = endpoint
        self.error = short


def from_store_error(exc: StoreError) -> CoordinatorError:
    """The coordinator's error for a StoreError: S3 gave no answer (503), else chosen by its S3 code."""
    if exc.unanswered:
        return DependencyUnavailable("s3", str(exc.endpoint), str(exc))
    return StorageFailed.from_store(exc)


class UnknownBucket(StorageFailed):
    """S3 has no such bucket: the request named one that does not exist (a payload to fix)."""

    http_status = 422


class PlanError(CoordinatorError, FieldError):
    """A request that cannot be planned; ``field`` names the payload field to fix."""

    http_status = 422
    what = "cannot plan the job"

    @property
    def detail(self) -> Any:
        """Shaped as FastAPI shapes its own 422s, so clients read one shape for every bad field."""
        return [{"loc": ["body", self.field], "msg": self.reason, "type": "plan_error"}]


class FilterError(CoordinatorError, ValueError):
    """A filter of the dashboard's job list that cannot be used; the page shows why beside the form."""

    http_status = 400


class BadPayload(CoordinatorError, FieldError):
    """The state machine's input is not a job payload; ``field`` is the first field at fault."""

    http_status = 422
    what = "not a job payload"


class ManifestError(CoordinatorError, FieldError):
    """A manifest document that cannot be read; ``field`` is its path (``events[3].rank``). A 500:
    the coordinator's own state is at fault, not the request, and the message says where."""

    what = "bad job manifest"


class PricesError(CoordinatorError, FieldError):
    """The price file cannot be used; ``field`` names the offending field, ``path`` the file."""

    def __init__(self, path: Path, field_name: str, reason: str) -> None:
        self.what = f"bad price file {path}"
        super().__init__(field_name, reason)
        self.path = path


class CalibrationError(CoordinatorError, FieldError):
    """The planner's calibration file cannot be used; ``field`` names the offending field, ``path`` the file."""

    def __init__(self, path: Path, field_name: str, reason: str) -> None:
        self.what = f"bad calibration file {path}"
        super().__init__(field_name, reason)
        self.path = path
