"""Exceptions of the inference worker. Lambda reports an escaped one by its class name
(``errorType``), which is what the coordinator's status and report show for the failed rank.

::

    WorkerError                    a rank cannot do its work (a bad event is contracts.EventError, before any)
    ├── CheckpointError            a checkpoint we cannot use: which file (``checkpoint``), why, what to do
    │   │                          (also a ValueError)
    │   ├── LegacyCheckpointError  a whole pickled model: run `cosmic convert-checkpoint <path>`
    │   ├── RefusedGlobal          the pickle names a global outside the allow-lists (``name``)
    │   └── ExportError            an exported model (``export``) that is corrupt, stale, does not fit the
    │                              model's inputs, or disagrees with the checkpoint it was made from
    ├── PartitionError             a partition not in a supported format or without the expected arrays
    │                              (``partition``; also a ValueError)
    ├── ScriptFailed               the legacy script is missing, exited non-zero or overran its deadline
    │                              (``script``)
    ├── JobCancelled               the job's cancel marker appeared: not a failure, the rank stops between
    │                              batches and answers ``cancelled`` (never escapes the handler)
    └── Superseded                 another attempt of the rank holds its commit claim: not a failure, this
                                   one stops, writes nothing and answers ``superseded`` (never escapes)
"""

from __future__ import annotations


class WorkerError(Exception):
    """A rank that cannot do its work; the message says what to fix."""


class CheckpointError(WorkerError, ValueError):
    """A checkpoint we cannot use; the message names the file, the reason and what to do.
    ``checkpoint`` is the file (a name, path or ``s3://`` URI) when one is known."""

    def __init__(self, message: str, *, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


class LegacyCheckpointError(CheckpointError):
    """A whole pickled model (the legacy ``DataParallel``): convert it once, then load the result."""


class RefusedGlobal(CheckpointError):
    """The pickle names a global outside the allow-lists; ``name`` is the one it named."""

    def __init__(self, name: str, file: str = "") -> None:
        where = f"{file}: " if file else ""
        super().__init__(f"{where}refused to load global {name}: not one of the legacy model's classes or "
                         f"torch's tensor helpers, so not a plain legacy checkpoint (nothing in it was run)",
                         checkpoint=file or None)
        self.name = name


class ExportError(CheckpointError):
    """An exported model we must not run: its SHA-256 differs from its manifest's, it was made from
    another checkpoint, its inputs are not the model's, or (at creation) its predictions disagree
    with the torch model's. ``export`` is the file. Never answered around: a wrong answer is worse."""

    def __init__(self, message: str, *, export: str | None = None, checkpoint: str | None = None) -> None:
        super().__init__(message, checkpoint=checkpoint)
        self.export = export


class PartitionError(WorkerError, ValueError):
    """A partition that is not in a supported format or does not hold the expected arrays;
    ``partition`` is its key or file name."""

    def __init__(self, message: str, *, partition: str | None = None) -> None:
        super().__init__(message)
        self.partition = partition


class ScriptFailed(WorkerError):
    """The legacy script exited non-zero or overran its deadline; ``script`` is the event's, when known."""

    def __init__(self, message: str, *, script: str | None = None) -> None:
        super().__init__(message)
        self.script = script


class JobCancelled(WorkerError):
    """The job was cancelled while this rank worked; ``reason`` is the marker's. Caught by the
    native path, which stops, writes nothing further and answers ``cancelled``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the job was cancelled: {reason}")
        self.reason = reason


class Superseded(WorkerError):
    """Another attempt of this rank (``holder``) claimed the right to write its results first: a
    speculative backup and the original, or an orphan of a killed coordinator and its successor.
    Caught by the native path, which stops, writes nothing and answers ``superseded``."""

    def __init__(self, holder: int | None) -> None:
        super().__init__(f"attempt {holder} of this rank writes its results" if holder is not None
                         else "another attempt of this rank writes its results")
        self.holder = holder
