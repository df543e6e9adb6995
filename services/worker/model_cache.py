"""The model, loaded once per sandbox and kept across warm invocations, keyed by checkpoint ETag.

The legacy worker downloaded its checkpoint on every invocation. Here a warm invocation costs one
HEAD request: the predictor is reused while the checkpoint's bucket, key and ETag are unchanged.
Which checkpoint: the one the event names, else the best file in the legacy model folder
``{S3_OBJECT_NAME}/Fine_Tune_Model/`` (a converted ``.cosmic.safetensors`` first).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.contracts import Checkpoint, WorkerEvent
from services.logs import event as log_event
from services.s3store import S3Store
from services.worker.checkpoints import build_model, choose_checkpoint, load_state_dict
from services.worker.errors import CheckpointError
from services.worker.inference import Predictor

log = logging.getLogger("cosmic.worker.model")
#: Where users keep the fine-tuned checkpoint today, inside the model folder.
LEGACY_CHECKPOINT_FOLDER = "Fine_Tune_Model"


@dataclass(frozen=True)
class Loaded:
    predictor: Predictor
    checkpoint: Checkpoint
    etag: str
    cold: bool  # this call loaded the model
    load_s: float  # seconds spent downloading and loading it (0 when warm)


def locate_checkpoint(store: S3Store, job: WorkerEvent) -> Checkpoint:
    """The checkpoint the event names, else the one found in the model folder."""
    if job.checkpoint is not None:
        return job.checkpoint
    if not (job.model_bucket and job.model_prefix):
        raise CheckpointError("the event names no checkpoint and no model folder (model_bucket, model_prefix)")
    folder = f"{job.model_prefix.strip('/')}/{LEGACY_CHECKPOINT_FOLDER}/"
    keys = list(store.keys(job.model_bucket, folder))
    chosen = choose_checkpoint(keys)
    if chosen is None:
        found = ", ".join(keys[:5]) or "nothing"
        raise CheckpointError(f"no checkpoint in s3://{job.model_bucket}/{folder} (found {found}); "
                              "put a state_dict (.pt or .safetensors) there or name one in the event")
    return Checkpoint(job.model_bucket, chosen)


class ModelCache:
    """Holds the one predictor of this sandbox."""

    def __init__(self, store: S3Store, scratch: Path, precision: str = "") -> None:
        self._store, self._scratch, self._precision = store, scratch, precision
        self._current: tuple[tuple[str, str, str], Predictor] | None = None
        self._lock = threading.Lock()  # callers in threads (tests, embedded use) load the model once

    def get(self, checkpoint: Checkpoint) -> Loaded:
        with self._lock:
            return self._get(checkpoint)

    def _get(self, checkpoint: Checkpoint) -> Loaded:
        etag = self._store.etag(checkpoint.bucket, checkpoint.key)
        if etag is None:
            raise CheckpointError(f"checkpoint s3://{checkpoint.bucket}/{checkpoint.key} does not exist",
                                  checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}")
        identity = (checkpoint.bucket, checkpoint.key, etag)
        if self._current is not None and self._current[0] == identity:
            return Loaded(self._current[1], checkpoint, etag, cold=False, load_s=0.0)
        started = time.perf_counter()
        self._current = None  # free the old model before loading the new one
        path = self._download(checkpoint, etag)
        model = build_model(load_state_dict(path))
        predictor = Predictor(model, self._precision) if self._precision else Predictor(model)
        self._current = (identity, predictor)
        load_s = time.perf_counter() - started
        log_event(log, "model_loaded", checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}", etag=etag,
                  seconds=round(load_s, 3), precision=predictor.precision, threads=predictor.threads)
        return Loaded(predictor, checkpoint, etag, cold=True, load_s=load_s)

    def _download(self, checkpoint: Checkpoint, etag: str) -> Path:
        name = Path(checkpoint.key).name
        tag = hashlib.sha256(f"{checkpoint.bucket}/{checkpoint.key}/{etag}".encode()).hexdigest()[:16]
        folder = self._scratch / "cosmic-checkpoints" / tag
        path = folder / name
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.partial")  # one per writer
            self._store.download(checkpoint.bucket, checkpoint.key, str(partial))
            partial.replace(path)
        if checkpoint.sha256 is not None:
            digest = _sha256(path)
            if digest != checkpoint.sha256:
                path.unlink()
                raise CheckpointError(f"checkpoint s3://{checkpoint.bucket}/{checkpoint.key} has SHA-256 {digest}, "
                                      f"the event expects {checkpoint.sha256}",
                                      checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}")
        return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
