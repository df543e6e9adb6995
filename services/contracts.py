"""The worker's event and response, and the states of jobs, ranks and attempts: the one contract
between the coordinator, the workers and whoever reads ``GET /jobs/{id}``.

Both services import this module, so it imports neither torch nor boto3 (standard library only).
Every field is documented here and nowhere else. ``SCHEMA_VERSION`` changes when a field changes
meaning; a worker refuses events of a version it does not know, before doing any work.

An event arrives either in this form (``{"version": 1, ...}``) or as the legacy Step Functions
Map item (``{"S3_BUCKET", "S3_OBJECT_NAME", "SCRIPT", ..., "RANK", "DATA_PATH", ...}``), which
:func:`parse_event` converts. Bad events raise :class:`EventError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
MODES = ("native", "script", "selftest")
MAX_BATCH_SIZE = 65_536
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
LEGACY_KEYS = {"S3_BUCKET", "S3_OBJECT_NAME", "SCRIPT", "S3_OBJECT_TYPE", "WORLD_SIZE", "RANK", "DATA_BUCKET",
               "DATA_PREFIX", "DATA_PATH", "RESULT_PATH", "BATCH_SIZE"}


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``: the rendezvous endpoint, as events,
    the coordinator's settings and the deploy's stack outputs carry it; ValueError otherwise."""
    match = _HOST_PORT.match(endpoint.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{endpoint!r} is not host:port")
    return match["host"].strip("[]"), int(match["port"])


class FieldError(ValueError):
    """Input that cannot be used, naming the offending ``field`` and the ``reason``: the one shape
    of the errors at every boundary (worker events, job requests, settings files)."""

    what = "bad input"

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{self.what}: {field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class EventError(FieldError):
    """An event the worker cannot run."""

    what = "bad worker event"


@dataclass(frozen=True)
class Checkpoint:
    """Where the model's weights are. ``sha256`` (hex), when known, is checked after download."""

    bucket: str
    key: str
    sha256: str | None = None


#: Optional event fields added after version 1 was first written (see :meth:`WorkerEvent.to_dict`).
_ADDED_WITHIN_VERSION = ("abort_key", "speculative")


@dataclass(frozen=True)
class WorkerEvent:
    """What one worker invocation must do.

    Attributes:
        job_id: the coordinator's job id; names the job in logs and results.
        rank: this worker's rank, ``0 <= rank < world_size``.
        world_size: how many workers the job has.
        data_bucket: the bucket holding the partitions.
        partitions: the partition keys this rank infers, in order (may be empty for a rank with
            nothing to do).
        result_bucket: where results go.
        result_path: the prefix results go under: ``{result_path}/{rank}.json`` and
            ``{result_path}/predictions/{rank}.npy``. A retried rank overwrites only these.
        batch_size: samples per forward pass.
        attempt: 1 for the first try; retries count up (a retry skips the collective).
        mode: ``native`` (our inference), ``script`` (the legacy executor: run ``script`` from
            the model folder) or ``selftest`` (check S3 access and, with a rendezvous endpoint,
            pair with the partner rank).
        model_bucket, model_prefix: the legacy model folder (``S3_BUCKET``/``S3_OBJECT_NAME``),
            where the checkpoint is looked for when ``checkpoint`` is not given, and which
            ``script`` mode downloads.
        script: the legacy script's path (``script`` mode only).
        checkpoint: an explicit checkpoint location, which wins over the model folder.
        rendezvous: ``host:port`` of the rendezvous server, for the collective summary.
        comm_name: the job's secret communicator name (required with ``rendezvous``).
        cancel_key: the S3 key (in ``result_bucket``) of the job's cancel marker
            (:func:`services.keys.control_key`), checked between batches: a cancelled rank stops and writes
            nothing further.
        abort_key: the S3 key (in ``result_bucket``) of the job's abort marker, which the
            coordinator writes when a rank fails, times out or is cancelled: the collective is
            doomed then, so ranks in it leave at once and ranks not yet in it skip it.
        collective_timeout_s: the deadline of the collective summary; it is best effort.
        speculative: the job may run a backup attempt of a slow rank beside it (the payload's
            ``speculate``): the per-batch hook then also looks at the rank's commit claim
            (:func:`services.keys.commit_key`) and stops as ``superseded`` once another attempt holds it.
    """

    job_id: str
    rank: int
    world_size: int
    data_bucket: str
    partitions: tuple[str, ...]
    result_bucket: str
    result_path: str
    batch_size: int = 512
    attempt: int = 1
    mode: str = "native"
    model_bucket: str | None = None
    model_prefix: str | None = None
    script: str | None = None
    checkpoint: Checkpoint | None = None
    rendezvous: str | None = None
    comm_name: str | None = None
    cancel_key: str | None = None
    abort_key: str | None = None
    collective_timeout_s: float = 60.0
    speculative: bool | None = None
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-able data, in the versioned form. Fields added within a version are
        left out while unset, so a document written before them reads back byte for byte. Built
        field by field: ``dataclasses.asdict``'s deep copy was half a second per manifest of 10,000
        events, and a job writes its manifest three times."""
        data = {name: getattr(self, name) for name in _EVENT_FIELDS}
        data["partitions"] = list(self.partitions)
        if self.checkpoint is not None:
            data["checkpoint"] = dataclasses.asdict(self.checkpoint)
        for name in _ADDED_WITHIN_VERSION:
            if data[name] is None:
                del data[name]
        return data


_EVENT_FIELDS = tuple(field.name for field in dataclasses.fields(WorkerEvent))


@dataclass(frozen=True)
class WorkerResult:
    """What a worker answers, so that the caller need not read S3 to know how the rank went.

    Attributes:
        job_id, rank, attempt: echo the event.
        status: ``succeeded``, ``cancelled``, or ``superseded`` (another attempt of the rank holds
            its commit claim: this one wrote nothing); failures are Lambda function errors instead.
        result_keys: every S3 key the rank wrote.
        num_samples: samples inferred.
        partitions_done: partition keys finished (all of them unless cancelled).
        timings_s: seconds spent per phase (``download``, ``load`` with its ``model_download``, ``infer``, ``upload``,
            ``collective``: the collective summary, mostly waiting for the other ranks).
        peak_rss_mb: the process's peak resident memory.
        cold_start: whether this invocation loaded the model.
        collective: ``done``, ``skipped`` or ``failed: <reason>``.
        checks: what the mode found beyond the above (``selftest``: the S3 round trip and the
            pairing, with the addresses each side saw; ``script``: the exit code and output tail).
    """

    job_id: str
    rank: int
    attempt: int
    status: str
    result_keys: list[str] = field(default_factory=list)
    num_samples: int = 0
    partitions_done: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    cold_start: bool = False
    collective: str = "skipped"
    checks: dict[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)



# -- the state model: what a job, a rank, an attempt and a rank's work can be -----------------
# StrEnums: a member is its string everywhere (JSON, logs, comparisons with older documents).
class JobState(enum.StrEnum):
    """Where a job is (``GET /jobs/{id}``'s ``state``): ``queued`` -> ``running`` -> a terminal state;
    ``cancelling`` sits between a live state and ``cancelled``."""

    #: Accepted, waiting for its function's capacity behind the jobs submitted before it;
    #: ``queue_position`` says where it stands (1: next). A retried job is queued again.
    QUEUED = "queued"
    #: At least one rank was given capacity; the others start as capacity frees.
    RUNNING = "running"
    #: A cancel was asked for: no rank starts any more, running ones are finishing.
    CANCELLING = "cancelling"
    #: Every rank succeeded (the summary may still be missing: ``summary_error``).
    SUCCEEDED = "succeeded"
    #: A rank failed its every attempt, the job deadline passed, or the coordinator erred (``error``).
    FAILED = "failed"
    #: Cancelled before every rank succeeded.
    CANCELLED = "cancelled"


#: The states a job never leaves.
TERMINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class RankState(enum.StrEnum):
    """Where one rank is: its latest attempt's outcome, or ``pending`` before its first."""

    PENDING = "pending"  #: no attempt yet (it waits for capacity), or its attempt was lost and it runs again
    RUNNING = "running"  #: an attempt is under way, including one waiting out throttling
    SUCCEEDED = "succeeded"  #: an attempt succeeded; the rank never runs again
    FAILED = "failed"  #: its last attempt failed; retrying the job runs it again
    CANCELLED = "cancelled"  #: the job was cancelled, or ran out of time, before it succeeded


class AttemptState(enum.StrEnum):
    """One invocation of a rank (``attempt`` counts them from 1)."""

    #: Lambda answered 429 (TooManyRequestsException): the attempt waits with backoff for capacity.
    #: Waiting spends no attempt and ends at the job's deadline at the latest; asking again is ``running``.
    THROTTLED = "throttled"
    RUNNING = "running"  #: the invocation was sent and has not answered
    SUCCEEDED = "succeeded"  #: the worker answered with its results
    FAILED = "failed"  #: the worker failed or timed out, or could not be reached after retries (``error``)
    CANCELLED = "cancelled"  #: the worker saw the cancel marker and stopped between partitions
    SUPERSEDED = "superseded"  #: a later attempt of the rank took its place; its answer is not the rank's
    LOST = "lost"  #: the coordinator stopped while it ran; the rank's result in S3, if any, decides


class RankPhase(enum.StrEnum):
    """What a rank is doing, in order (``queued`` and ``starting`` seen by the coordinator, the rest
    reported by the worker)."""

    QUEUED = "queued"  #: waiting for capacity (its job queued, or its job's other ranks hold it)
    STARTING = "starting"  #: the invocation was sent; the sandbox starts (a cold start loads the runtime)
    DOWNLOADING = "downloading"  #: fetching its partitions (and the checkpoint on a cold start)
    LOADING_MODEL = "loading_model"  #: building the model from the checkpoint
    INFERRING = "inferring"  #: forward passes over the partitions
    UPLOADING = "uploading"  #: predictions, labels and the result document go to S3
    COLLECTIVE = "collective"  #: the job's summary over the communicator
    DONE = "done"  #: the worker answered

def legacy_item(event: WorkerEvent) -> dict[str, Any]:
    """The legacy Step Functions Map item for ``event`` (what :func:`parse_event` converts back).

    Only what the legacy item can say survives: job id, checkpoint, rendezvous and cancel marker
    do not, which is why the coordinator sends versioned events and only the Step Functions path
    (its users' own state machine) sends these.
    """
    prefix = posixpath.dirname(event.partitions[0]) if event.partitions else ""
    return {"S3_BUCKET": event.model_bucket, "S3_OBJECT_NAME": event.model_prefix, "SCRIPT": event.script or "",
            "S3_OBJECT_TYPE": "folder", "WORLD_SIZE": str(event.world_size), "RANK": str(event.rank),
            "DATA_BUCKET": event.data_bucket, "DATA_PREFIX": prefix,
            "DATA_PATH": [posixpath.basename(key) if posixpath.dirname(key) == prefix else key
                          for key in event.partitions],
            "RESULT_PATH": event.result_path, "BATCH_SIZE": str(event.batch_size)}


def parse_event(raw: Any) -> WorkerEvent:
    """A validated event from either form; raises EventError naming the first bad field."""
    if not isinstance(raw, dict):
        raise EventError("event", f"must be a JSON object, got {type(raw).__name__}")
    if "version" not in raw and LEGACY_KEYS & raw.keys():
        raw = _from_legacy(raw)
    version = raw.get("version")
    if version != SCHEMA_VERSION:
        raise EventError("version", f"this worker reads version {SCHEMA_VERSION}, got {version!r}")
    known = {f.name for f in dataclasses.fields(WorkerEvent)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EventError(unknown[0], "unknown field")
    for name in ("job_id", "rank", "world_size", "data_bucket", "partitions", "result_bucket", "result_path"):
        if name not in raw:
            raise EventError(name, "required")
    values = dict(raw)
    values["partitions"] = tuple(_strings("partitions", raw["partitions"]))
    if raw.get("checkpoint") is not None:
        values["checkpoint"] = _checkpoint(raw["checkpoint"])
    event = WorkerEvent(**values)
    _validate(event)
    return event


def _validate(event: WorkerEvent) -> None:
    _text("job_id", event.job_id)
    for name in ("rank", "world_size", "batch_size", "attempt"):
        if not isinstance(getattr(event, name), int) or isinstance(getattr(event, name), bool):
            raise EventError(name, "must be an integer")
    if event.world_size < 1:
        raise EventError("world_size", "must be at least 1")
    if not 0 <= event.rank < event.world_size:
        raise EventError("rank", f"must be within 0..{event.world_size - 1}")
    if not 1 <= event.batch_size <= MAX_BATCH_SIZE:
        raise EventError("batch_size", f"must be within 1..{MAX_BATCH_SIZE}")
    if event.attempt < 1:
        raise EventError("attempt", "must be at least 1")
    if event.mode not in MODES:
        raise EventError("mode", f"must be one of {', '.join(MODES)}")
    for name in ("data_bucket", "result_bucket", "model_bucket"):
        bucket = getattr(event, name)
        if bucket is not None and not _BUCKET.match(str(bucket)):
            raise EventError(name, f"{bucket!r} is not an S3 bucket name")
    _key("result_path", event.result_path)
    for key in event.partitions:
        _key("partitions", key)
    if event.mode == "script" and not (event.script and event.model_bucket and event.model_prefix):
        raise EventError("script", "script mode needs script, model_bucket and model_prefix")
    if event.rendezvous is not None:
        try:
            split_endpoint(event.rendezvous)
        except ValueError:
            raise EventError("rendezvous", f"must be host:port, got {event.rendezvous!r}") from None
        if not event.comm_name:
            raise EventError("comm_name", "required with rendezvous (the job's secret)")
    if event.speculative is not None and not isinstance(event.speculative, bool):
        raise EventError("speculative", "must be true or false")
    if not isinstance(event.collective_timeout_s, int | float) or not 0 < event.collective_timeout_s <= 900:
        raise EventError("collective_timeout_s", "must be within (0, 900] seconds")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise EventError(name, "must be a non-empty string")
    return value


def _key(name: str, value: Any) -> None:
    key = _text(name, value)
    if key.startswith("/") or ".." in key.split("/") or len(key.encode()) > 1024:
        raise EventError(name, f"{key!r} is not a safe S3 key (no leading /, no .., at most 1024 bytes)")


def _strings(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise EventError(name, "must be a string or a list of strings")
    return list(value)


def _checkpoint(value: Any) -> Checkpoint:
    if not isinstance(value, dict) or not {"bucket", "key"} <= value.keys():
        raise EventError("checkpoint", "must be {bucket, key[, sha256]}")
    sha = value.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise EventError("checkpoint", "sha256 must be 64 lowercase hex digits")
    return Checkpoint(_text("checkpoint.bucket", value["bucket"]), _text("checkpoint.key", value["key"]), sha)


def _from_legacy(item: dict[str, Any]) -> dict[str, Any]:
    """The versioned form of a legacy Map item (always ``native`` mode: every legacy item names a
    script, so its presence decides nothing)."""
    try:
        prefix = str(item.get("DATA_PREFIX", "")).strip("/")
        paths = _strings("DATA_PATH", item.get("DATA_PATH", []))
        partitions = [p if "/" in p or not prefix else f"{prefix}/{p}" for p in paths]
        data_bucket = item.get("DATA_BUCKET") or item["S3_BUCKET"]
        return {"version": SCHEMA_VERSION, "job_id": f"legacy-{item.get('RESULT_PATH', 'job')}",
                "rank": int(item["RANK"]), "world_size": int(item.get("WORLD_SIZE", 1)),
                "data_bucket": data_bucket, "partitions": partitions, "result_bucket": data_bucket,
                "result_path": str(item["RESULT_PATH"]).strip("/"), "batch_size": int(item.get("BATCH_SIZE", 512)),
                "model_bucket": item.get("S3_BUCKET"), "model_prefix": item.get("S3_OBJECT_NAME"),
                "script": item.get("SCRIPT")}
    except KeyError as missing:
        raise EventError(str(missing.args[0]), "required in a legacy Map item") from None
    except (TypeError, ValueError) as exc:
        raise EventError("legacy item", str(exc)) from None
