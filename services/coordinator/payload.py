"""The job request: the payload users already POST, every legacy field kept, plus the new options.

Validation happens here, at the HTTP boundary, so that a bad payload is a 422 naming its field
before anything is planned: bucket names, keys that cannot escape their prefix, limits on world
size and concurrency. Checks that need S3 (does the prefix hold partitions, are there enough)
are planning's, and are 422s too.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_BYTES = 512
#: The key prefix of the coordinator's own objects (manifests, journals, locks, idempotency records,
#: cancel markers; :mod:`.state`), in whichever bucket holds them: no payload prefix may overlap it.
RESERVED_PREFIX = ".cosmic"


def safe_prefix(value: str, name: str) -> str:
    """A key prefix that stays where it says: no leading ``/``, no ``..`` or empty segment, no control bytes."""
    cleaned = value.strip("/")
    if not cleaned:
        raise ValueError(f"{name} must not be empty")
    if len(cleaned.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"{name} must be at most {MAX_KEY_BYTES} bytes")
    parts = cleaned.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{name} must not contain empty, '.' or '..' segments: {value!r}")
    if any(ord(ch) < 32 or ch in "\\" for ch in cleaned):
        raise ValueError(f"{name} must not contain control characters or backslashes")
    return cleaned


def outside_reserved(value: str, name: str) -> str:
    """A prefix (already :func:`safe_prefix`-clean) that neither is nor lies under :data:`RESERVED_PREFIX`.

    Clean prefixes are whole segments, so ``.cosmic-results`` is allowed and ``.cosmic/x`` is not."""
    if value == RESERVED_PREFIX or value.startswith(RESERVED_PREFIX + "/"):
        raise ValueError(f"{name} {value!r} is under {RESERVED_PREFIX}/, reserved for the coordinator's own "
                         "objects (job manifests, journals, locks): choose another prefix")
    return value


class CheckpointRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bucket: str
    key: str
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("must be 64 lowercase hex digits")
        return value


#: ``file_limit`` that takes every partition under the prefix, however many there are.
ALL_PARTITIONS = "all"


class JobRequest(BaseModel):
    """``POST /jobs``: the legacy payload as is, plus optional fields (see the README's table)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # -- the legacy payload -----------------------------------------------------------------
    bucket: str = Field(description="bucket of the model folder (and of job state by default)")
    file_limit: int | str = Field(description="how many partitions to use: the first K in numeric order, "
                                              "or 'all' for every partition under the prefix")
    batch_size: int = Field(512, ge=1, le=65_536)
    object_type: Literal["folder"] = "folder"
    S3_object_name: str = Field(description="the model folder, e.g. 'Anomaly Detection'")
    script: str | None = Field(None, description="the legacy script (run only in mode 'script')")
    result_path: str = Field(description="prefix of the results in data_bucket")
    data_bucket: str
    data_prefix: str = Field(description="prefix of the partitions {i}.pt")
    # -- added ------------------------------------------------------------------------------
    world_size: int | None = Field(None, ge=1, description="ranks (workers); default file_limit")
    max_concurrency: int | None = Field(None, ge=1, description="ranks running at once; default world_size")
    max_attempts: int | None = Field(None, ge=1, le=10, description="attempts per rank")
    assignment: Literal["contiguous", "wrap"] | None = Field(
        None, description="partitions per rank: contiguous runs, or rank % K (default: wrap only when world_size > K)")
    communicator: bool | None = Field(None, description="link the ranks for the collective summary")
    speculate: bool = Field(False, description="run a backup attempt of a rank slower than speculate_multiple x "
                                               "the median of the finished ranks; the first to finish wins")
    speculate_multiple: float = Field(2.0, ge=1.2, le=100.0, description="how much slower than the median "
                                                                         "a rank must be to get a backup")
    mode: Literal["native", "script"] = "native"
    checkpoint: CheckpointRef | None = None
    function: str | None = Field(None, min_length=1, max_length=170, description="worker function to invoke")

    @field_validator("bucket", "data_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value):
            raise ValueError(f"{value!r} is not an S3 bucket name")
        return value

    @field_validator("file_limit")
    @classmethod
    def _file_limit(cls, value: int | str) -> int | str:
        if isinstance(value, str) and value.strip().lower() == ALL_PARTITIONS:
            return ALL_PARTITIONS
        try:
            limit = int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be a whole number (as a string or an int) or 'all', got {value!r}") from None
        if limit < 1:
            raise ValueError("must be at least 1")
        return limit

    @field_validator("result_path", "data_prefix", "S3_object_name")
    @classmethod
    def _prefix(cls, value: str, info: object) -> str:
        name = getattr(info, "field_name", "prefix")
        return outside_reserved(safe_prefix(value, name), name)

    @model_validator(mode="after")
    def _script_mode(self) -> JobRequest:
        if self.mode == "script" and not self.script:
            raise ValueError("mode 'script' needs the 'script' field")
        if self.checkpoint is not None and not _BUCKET.match(self.checkpoint.bucket):
            raise ValueError(f"checkpoint.bucket {self.checkpoint.bucket!r} is not an S3 bucket name")
        return self

    @property
    def partitions_wanted(self) -> int | None:
        """The first ``file_limit`` partitions; None for all of them."""
        return None if self.file_limit == ALL_PARTITIONS else int(self.file_limit)
