"""Where a job's objects live in S3, shared by the worker (which writes them) and the coordinator
(which reads them): each rank's results, the job's markers, and how partitions are numbered.

Standard library only, as the contracts are: both services import it.
"""

from __future__ import annotations

import re


def result_key(result_path: str, rank: int) -> str:
    """The rank's result document, with every legacy key: ``{result_path}/{rank}.json``."""
    return f"{result_path}/{rank}.json"


def predictions_key(result_path: str, rank: int) -> str:
    """The rank's predicted redshifts (float32 ``.npy``, in partition order)."""
    return f"{result_path}/predictions/{rank}.npy"


#: Samples per legacy partition size (shared/LEGACY.md): the size labels users' prefixes carry
#: (``100MB/{i}.pt``). Here, not in the worker, so that the CLI and the planner's errors can name
#: them without torch.
SAMPLES_PER_PARTITION = {"25MB": 1278, "50MB": 2556, "75MB": 3834, "100MB": 5113}

#: The file forms a partition may take, by suffix (see services/worker/data.py).
_PARTITION = re.compile(r"(?:^|/)(\d+)\.(pt|npz|safetensors)$")


def partition_number(key: str) -> int | None:
    """The ``i`` of ``.../{i}.pt`` (or ``.npz``, ``.safetensors``), None for any other key.

    Partitions sort by it, so ``2.pt`` comes before ``10.pt`` (the legacy planner sorted names
    as strings and, with ``file_limit`` 11, picked ``1, 10, 100..108``).
    """
    match = _PARTITION.search(key)
    return int(match.group(1)) if match else None


def labels_key(result_path: str, rank: int) -> str:
    """The true redshifts of the rank's samples (float32 ``.npy``, same order), when partitions carry them."""
    return f"{result_path}/labels/{rank}.npy"


#: The job's markers, under its result path: the one place both the coordinator and the workers
#: may reach on AWS (the worker role reads and writes only its results' prefix and the inputs).
CONTROL_MARKERS = ("cancel", "abort")


def control_key(result_path: str, job_id: str, marker: str) -> str:
    """Where a job's ``cancel`` or ``abort`` marker lives: ``{result_path}/_control/{job_id}/{marker}.json``
    (the job's id in the key: a later job on the same result path never meets an old marker)."""
    if marker not in CONTROL_MARKERS:
        raise ValueError(f"no marker {marker!r}; markers are {', '.join(CONTROL_MARKERS)}")
    return f"{result_path}/_control/{job_id}/{marker}.json"


def commit_key(result_path: str, job_id: str, rank: int) -> str:
    """The rank's commit claim: created (conditionally) by the one attempt that may write the rank's
    results, ``{result_path}/_control/{job_id}/commit-{rank}.json`` holding its attempt number. Two
    attempts alive at once (a speculative backup, an orphan of a killed coordinator) race for it; the
    loser writes nothing (it is ``superseded``)."""
    return f"{result_path}/_control/{job_id}/commit-{rank}.json"


def outcome_key(result_path: str, job_id: str, rank: int, attempt: int) -> str:
    """What an attempt that did not succeed answered (failed, cancelled, superseded), written by the
    worker too: a coordinator that was not there to hear the answer reads it here."""
    return f"{result_path}/_control/{job_id}/outcome-{rank}-{attempt}.json"


def collective_summary_key(result_path: str) -> str:
    """Rank 0's summary of the job, computed over the communicator."""
    return f"{result_path}/summary_collective.json"


def progress_prefix(result_path: str, job_id: str) -> str:
    """Where a job's ranks report their progress: one small object per rank under it."""
    return f"{result_path}/_progress/{job_id}/"


def progress_key(result_path: str, job_id: str, rank: int) -> str:
    """The rank's progress record (:class:`services.progress.RankProgress`), rewritten as it works:
    ``{result_path}/_progress/{job_id}/rank-{rank}.json``, under the result path the worker role may write
    (``rank-``: nothing that looks for ``.../{rank}.json`` results takes it for one)."""
    return f"{progress_prefix(result_path, job_id)}rank-{rank}.json"
