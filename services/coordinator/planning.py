"""Planning: which partitions a job has, and which rank infers which, as one worker event per rank.

Fixes what the legacy planner got wrong: the listing follows every page (it stopped at 1,000
keys), partitions sort by number (it sorted names as strings, so ``file_limit: 11`` picked
``1, 10, 100..108``), and each job gets its own unguessable communicator name (it used the
fixed ``"fmi_pair"``, so two jobs on one rendezvous server cross-paired).
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import secrets
import socket
from dataclasses import dataclass

from services.contracts import Checkpoint, WorkerEvent, split_endpoint
from services.coordinator.capacity import Capacity
from services.coordinator.errors import PlanError
from services.coordinator.payload import RESERVED_PREFIX, JobRequest
from services.keys import SAMPLES_PER_PARTITION, control_key, partition_number
from services.s3store import S3Store


@dataclass(frozen=True)
class Partition:
    key: str
    size: int


@dataclass(frozen=True)
class Plan:
    """What a job runs: its partitions (first K in numeric order) and one event per rank."""

    partitions: tuple[Partition, ...]
    events: tuple[WorkerEvent, ...]
    assignment: str
    comm_name: str | None
    #: How many ranks run at once: the request's ``max_concurrency`` (else all), within the limit.
    max_concurrency: int
    #: What the submitter should know (the communicator turned off for want of capacity).
    warnings: tuple[str, ...] = ()


def list_partitions(store: S3Store, bucket: str, prefix: str) -> list[Partition]:
    """Every partition directly under ``prefix``, in numeric order, across every page of the listing."""
    folder = prefix.strip("/") + "/"
    found = [(number, Partition(key, size)) for key, _, size in store.objects(bucket, folder)
             if "/" not in key[len(folder):] and (number := partition_number(key)) is not None]
    found.sort(key=lambda item: (item[0], item[1].key))
    return [partition for _, partition in found]


def choose_partitions(store: S3Store, request: JobRequest) -> list[Partition]:
    """The first ``file_limit`` partitions, or a PlanError that says what exists instead."""
    available = list_partitions(store, request.data_bucket, request.data_prefix)
    if not available:
        folders = [f.rstrip("/") for f in store.folders(request.data_bucket)
                   if f.rstrip("/") != RESERVED_PREFIX][:20]  # never suggest what would be refused
        raise PlanError("data_prefix", missing_partitions(request.data_bucket, request.data_prefix, folders))
    wanted = request.partitions_wanted
    if wanted is None:
        return available
    if wanted > len(available):
        raise PlanError("file_limit", f"{wanted} partitions asked for, but "
                                      f"s3://{request.data_bucket}/{request.data_prefix}/ holds {len(available)}")
    return available[:wanted]


def missing_partitions(bucket: str, prefix: str, folders: list[str]) -> str:
    """Why a prefix cannot be planned, and how to fill it: the key pattern filled in with the prefix
    (``100MB/1.pt``, not a template), what exists instead, and the ``cosmic data`` commands."""
    prefix = prefix.strip("/")
    exists = f"prefixes that exist: {', '.join(folders)}" if folders else "the bucket has no prefixes"
    size = partition_label(prefix)
    size_option = size if size in SAMPLES_PER_PARTITION else "|".join(SAMPLES_PER_PARTITION)
    return (f"no partitions under s3://{bucket}/{prefix}/: a job reads {prefix}/1.pt, {prefix}/2.pt, ... "
            f"(numbered from 1; .npz and .safetensors also); {exists}. Make and upload them with "
            f"`cosmic data generate --size {size_option} --count N` and "
            f"`cosmic data upload data/{size if size in SAMPLES_PER_PARTITION else '<size>'} --prefix {prefix} "
            f"--bucket {bucket}` (add `--embedded` to both upload and ls when the coordinator is `cosmic serve "
            f"--embedded`); `cosmic data ls --bucket {bucket}` lists what is there")


def assign(keys: list[str], world_size: int, assignment: str) -> list[list[str]]:
    """Partitions per rank: contiguous runs (``ceil(left / ranks left)`` each, as the legacy planner
    did), or ``wrap``: rank r gets partition ``r % K`` (the legacy runs with world_size > K)."""
    if assignment == "wrap":
        return [[keys[rank % len(keys)]] for rank in range(world_size)]
    runs, start = [], 0
    for rank in range(world_size):
        count = math.ceil((len(keys) - start) / (world_size - rank))
        runs.append(keys[start:start + count])
        start += count
    return runs


def plan(request: JobRequest, partitions: list[Partition], *, job_id: str, function_timeout_s: float,
         max_world_size: int, rendezvous: str | None,
         max_concurrency_limit: int | None = None, capacity: Capacity | None = None) -> Plan:
    """The events of a job whose partitions are known; raises PlanError for impossible requests.

    ``max_concurrency_limit`` caps how many ranks run at once (the coordinator's
    COSMIC_COORDINATOR_MAX_CONCURRENCY_LIMIT; None: no cap, as under Step Functions), and
    ``capacity`` is the function's (None: unknown).

    The communicator never decides a job's fate: it needs every rank running at once, so a job
    that cannot have them runs without it (the coordinator's summary is the result anyway) and is
    warned; only a request that asks for it explicitly is refused, naming both numbers.
    """
    count = len(partitions)
    world_size = request.world_size or count
    if world_size > max_world_size:
        raise PlanError("world_size",
                        f"at most {max_world_size} (this coordinator's COSMIC_COORDINATOR_MAX_WORLD_SIZE)")
    assignment = request.assignment or ("wrap" if world_size > count else "contiguous")
    if assignment == "contiguous" and world_size > count:
        raise PlanError("assignment", f"contiguous runs of {count} partitions leave ranks of world_size "
                                      f"{world_size} idle; use 'wrap' or a smaller world_size")
    communicator = request.communicator if request.communicator is not None else bool(rendezvous)
    warnings: list[str] = []
    if request.speculate and communicator:  # a rank's backup skips the collective its peers wait in
        if request.communicator:
            raise PlanError("speculate", "speculative backups and the communicator exclude each other (a backup "
                                         "skips the collective its peers wait in); set one of them false")
        communicator = False
        warnings.append("communicator off: speculate asks for backups of slow ranks, which skip the collective")
    if communicator and not rendezvous:
        raise PlanError("communicator", "no rendezvous server is configured (COSMIC_COORDINATOR_RENDEZVOUS_ENDPOINT)")
    concurrency = request.max_concurrency or world_size
    if max_concurrency_limit is not None:
        concurrency = min(concurrency, max_concurrency_limit)
    at_once, why = _at_once(request, max_concurrency_limit, capacity)
    if communicator and at_once is not None and at_once < world_size:
        if request.communicator:
            raise PlanError("communicator", f"the communicator needs all {world_size} ranks at once, but at most "
                                            f"{at_once} can run at once ({why}); set communicator false or "
                                            f"world_size at most {at_once}")
        communicator = False
        warnings.append(f"communicator off: it needs all {world_size} ranks at once, but at most {at_once} can "
                        f"run at once ({why}); ranks start as capacity frees, and the coordinator's summary "
                        f"is the job's result")
    comm_name = secrets.token_hex(16) if communicator else None
    checkpoint = (Checkpoint(request.checkpoint.bucket, request.checkpoint.key, request.checkpoint.sha256)
                  if request.checkpoint else None)
    # the same for every rank: computed once, not 10,000 times
    cancel_key = control_key(request.result_path, job_id, "cancel")
    abort_key = control_key(request.result_path, job_id, "abort")
    collective_timeout_s = min(120.0, function_timeout_s / 4)
    script = request.script if request.mode == "script" else None
    speculative = True if request.speculate else None
    events = tuple(
        WorkerEvent(job_id=job_id, rank=rank, world_size=world_size, data_bucket=request.data_bucket,
                    partitions=tuple(keys), result_bucket=request.data_bucket, result_path=request.result_path,
                    batch_size=request.batch_size, mode=request.mode, model_bucket=request.bucket,
                    model_prefix=request.S3_object_name, script=script, checkpoint=checkpoint,
                    rendezvous=rendezvous if communicator else None, comm_name=comm_name, cancel_key=cancel_key,
                    abort_key=abort_key, collective_timeout_s=collective_timeout_s, speculative=speculative)
        for rank, keys in enumerate(assign([p.key for p in partitions], world_size, assignment)))
    return Plan(tuple(partitions), events, assignment, comm_name, concurrency, tuple(warnings))


def _at_once(request: JobRequest, max_concurrency_limit: int | None,
             capacity: Capacity | None) -> tuple[int | None, str]:
    """The fewest ranks that may run at once, and what sets it (None: nothing known limits it)."""
    limits = [(request.max_concurrency, "the payload's max_concurrency"),
              (max_concurrency_limit, "COSMIC_COORDINATOR_MAX_CONCURRENCY_LIMIT"),
              (capacity.limit if capacity else None, capacity.source if capacity else "")]
    known = [(limit, why) for limit, why in limits if limit is not None]
    return min(known, key=lambda item: item[0]) if known else (None, "")


def partition_label(prefix: str) -> str:
    """The size label of a prefix (``.../25MB`` -> ``25MB``), as the seed table names rows."""
    return posixpath.basename(prefix.rstrip("/"))


def current_address(endpoint: str) -> str:
    """``endpoint`` with its host name replaced by the IPv4 address it resolves to now.

    On AWS the rendezvous name is a Route 53 record its task rewrites whenever it is replaced, with a
    short TTL; a sandbox's resolver may still hold the old answer (or a cached "no such name"), so
    the coordinator resolves the name when a job starts and hands every rank the same address.

    An address stays as it is. Raises OSError when the name does not resolve.
    """
    host, port = split_endpoint(endpoint)
    try:
        ipaddress.ip_address(host)
        return endpoint
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # a malformed name (an empty label) fails in the IDNA codec, not in DNS
        raise OSError(f"{host!r} is not a valid host name: {exc}") from None
    return f"{found[0][4][0]}:{port}"
