"""The job manifest: a job's request, its plan (one worker event per rank) and how far it got.

One type and one JSON form, read and written here only. The coordinator keeps a job's manifest at
``jobs/{job_id}/manifest.json`` (see :mod:`.state`), the Step Functions plan step beside its Map
items; the summary reads the same fields whichever of them ran the job.

A restarted coordinator resumes jobs from these documents, so the JSON stays readable across
releases: ``VERSION`` changes only when a field changes meaning, and a document of another
version is refused. Reading validates everything, the events with the workers' own
:func:`~services.contracts.parse_event`: a malformed document is a :class:`ManifestError` naming
the field (``events[3].rank``), never a KeyError in whichever module reads the field first.

What the plan determines (world size, input bytes, partition label, communicator) is derived,
not held twice; it is still written, for people reading the JSON and for older coordinators.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    computed_field,
    model_validator,
)

from services.contracts import FieldError, JobState, WorkerEvent, parse_event
from services.coordinator.errors import ManifestError
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, Plan, partition_label
from services.s3store import S3Store, StoreError

VERSION = 1
#: Written only once they have a value, as the coordinator always did (older readers look them up with .get).
_WHEN_SET = ("started_at", "finished_at", "retried_at", "cancel_requested", "summary_key", "summary_error",
             "failed_ranks")
#: Request fields added since, written only when not their default, so older manifests read back as written.
_REQUEST_ADDED = {"speculate": False, "speculate_multiple": 2.0}


def _event(value: Any) -> WorkerEvent:
    return value if isinstance(value, WorkerEvent) else parse_event(value)


def _partition(value: Any) -> Partition:
    if isinstance(value, Partition):
        return value
    if (isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool) and value[1] >= 0):
        return Partition(value[0], value[1])
    raise ValueError(f"must be [key, size in bytes], got {value!r}")


#: A rank's event, as the worker reads it (JSON: ``WorkerEvent.to_dict()``).
Event = Annotated[WorkerEvent, PlainValidator(_event), PlainSerializer(lambda event: event.to_dict())]
#: A job's state; serialised as its text whether it was set as a JobState or as a plain string
#: (``model_copy(update=...)`` does not validate).
State = Annotated[JobState, PlainSerializer(str, return_type=str)]
#: A partition (JSON: ``[key, size]``).
PartitionItem = Annotated[Partition, PlainValidator(_partition), PlainSerializer(lambda p: [p.key, p.size])]


class Manifest(BaseModel):
    """Everything a job is, but its ranks' records (:class:`.state.RankRecord`).

    Frozen: a change is a new manifest (``model_copy(update=...)``), so a reader in another
    thread always sees one consistent version, and only the job's runner swaps it.

    Attributes:
        job_id, submitted_at, request, function: what was asked, when, and which worker function runs it.
        partitions, events: the plan, one event per rank in rank order; ``assignment`` says how
            partitions were dealt (``contiguous`` or ``wrap``).
        max_concurrency, max_attempts: ranks at once; attempts per rank.
        rendezvous: the rendezvous address the ranks were given, None without a communicator.
        idempotency_key, warnings: the submission's key and what it was warned about.
        state, error: where the job is (:class:`~services.contracts.JobState`) and why it failed.
        updated_at, started_at, finished_at, retried_at: when it was last written, started, ended, retried.
        cancel_requested: a cancel arrived while it ran.
        summary_key, summary_error: the ``s3://`` URI of its summary, or why there is none.
        failed_ranks: rank (as text, as JSON keys are) -> its last error, once the job ended.
    """

    # extra keys are ignored: the derived fields come back on read, and a newer coordinator may add some
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = VERSION
    job_id: str = Field(min_length=1)
    state: State = JobState.QUEUED
    submitted_at: float
    request: JobRequest
    function: str = Field(min_length=1)
    partitions: tuple[PartitionItem, ...]
    events: tuple[Event, ...] = Field(min_length=1)
    assignment: Literal["contiguous", "wrap"]
    max_concurrency: int = Field(ge=1)
    max_attempts: int = Field(ge=1)
    rendezvous: str | None = None
    idempotency_key: str | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    retried_at: float | None = None
    cancel_requested: bool = False
    summary_key: str | None = None
    summary_error: str | None = None
    failed_ranks: dict[str, str | None] | None = None

    @computed_field
    @property
    def world_size(self) -> int:
        return len(self.events)

    @computed_field
    @property
    def input_bytes(self) -> int:
        return sum(partition.size for partition in self.partitions)

    @computed_field
    @property
    def partition_label(self) -> str:
        """The data prefix's last component (``25MB``), as the seed table names rows."""
        return partition_label(self.request.data_prefix)

    @computed_field
    @property
    def communicator(self) -> bool:
        """Whether the ranks were linked for the collective summary (they share a secret name)."""
        return self.events[0].comm_name is not None

    @model_validator(mode="after")
    def _events_are_this_jobs_ranks(self) -> Manifest:
        for rank, event in enumerate(self.events):
            if event.rank != rank or event.world_size != len(self.events):
                raise ManifestError(f"events[{rank}]", f"is rank {event.rank} of {event.world_size}, "
                                                       f"not rank {rank} of {len(self.events)}")
            if event.job_id != self.job_id:
                raise ManifestError(f"events[{rank}].job_id", f"{event.job_id!r} is not the job's {self.job_id!r}")
        return self

    @classmethod
    def from_plan(cls, job_id: str, request: JobRequest, job_plan: Plan, *, function: str, max_attempts: int,
                  rendezvous: str | None = None, idempotency_key: str | None = None,
                  warnings: Sequence[str] = ()) -> Manifest:
        """A new job's manifest, ``queued``, submitted now."""
        return cls(job_id=job_id, submitted_at=time.time(), request=request, function=function,
                   partitions=job_plan.partitions, events=job_plan.events, assignment=job_plan.assignment,
                   max_concurrency=job_plan.max_concurrency, max_attempts=max_attempts, rendezvous=rendezvous,
                   idempotency_key=idempotency_key, warnings=tuple(warnings))

    def to_json(self) -> dict[str, Any]:
        """The JSON document (the form :meth:`from_json` reads)."""
        document = self.model_dump(mode="json")
        for name in _WHEN_SET:
            if document[name] is None or document[name] is False:
                del document[name]
        for name, default in _REQUEST_ADDED.items():
            if document["request"].get(name) == default:
                del document["request"][name]
        return document

    @classmethod
    def from_json(cls, document: Any) -> Manifest:
        """A validated manifest; raises ManifestError naming the first bad field."""
        if not isinstance(document, dict):
            raise ManifestError("manifest", f"must be a JSON object, got {type(document).__name__}")
        if document.get("version") != VERSION:
            raise ManifestError("version", f"this coordinator reads version {VERSION}, got {document.get('version')!r}")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise _named(exc) from None


def _named(exc: ValidationError) -> ManifestError:
    """The first of pydantic's errors as a ManifestError whose field is the full path."""
    error = exc.errors()[0]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):  # an EventError inside an event, or one of ours from a validator
        return ManifestError(f"{path}.{cause.field}" if path else cause.field, cause.reason)
    return ManifestError(path or "manifest", error["msg"])


def write_manifest(store: S3Store, bucket: str, key: str, manifest: Manifest) -> Manifest:
    """Write ``manifest`` stamped with ``updated_at``; returns what was written."""
    stamped = manifest.model_copy(update={"updated_at": time.time()})
    store.put_json(bucket, key, stamped.to_json(), indent=None)  # 10,000 events: indenting cost 0.5 s a write
    return stamped


def read_manifest(store: S3Store, bucket: str, key: str) -> Manifest | None:
    """The manifest at ``key``, None when there is none; ManifestError (naming the object) when malformed,
    not JSON included. S3 refusing or not answering stays a StoreError."""
    try:
        document = store.get_json(bucket, key)
    except StoreError as exc:
        if exc.code is not None or exc.unanswered:
            raise
        raise ManifestError("manifest", str(exc)) from None
    if document is None:
        return None
    try:
        return Manifest.from_json(document)
    except ManifestError as exc:
        raise ManifestError(exc.field, f"{exc.reason} (in s3://{bucket}/{key})") from None
