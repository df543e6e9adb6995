"""The model, loaded once per sandbox and kept across warm invocations, keyed by checkpoint ETag.

The legacy worker downloaded its checkpoint on every invocation. Here a warm invocation costs one
HEAD request: the predictor is reused while the checkpoint's bucket, key and ETag are unchanged.
Which checkpoint: the one the event names, else the best file in the legacy model folder
``{S3_OBJECT_NAME}/Fine_Tune_Model/`` (a converted ``.cosmic.safetensors`` first).

Which engine (``COSMIC_WORKER_ENGINE``, :mod:`.engines`): the lean engine runs the checkpoint's
export (``{checkpoint}.onnx`` and its manifest, :mod:`.lean`) and torch is never imported; a
checkpoint without an export runs on the torch Predictor, logging that an export would start
faster. Torch is imported here only when it runs, so the native path stays torch-free otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.contracts import Checkpoint, WorkerEvent
from services.logs import event as log_event
from services.s3store import S3Store
from services.worker import engines
from services.worker.checkpoint_names import choose_checkpoint
from services.worker.errors import CheckpointError
from services.worker.lean import LeanPredictor, Manifest, check_file, export_name, manifest_name, sha256_of

log = logging.getLogger("cosmic.worker.model")
#: Where users keep the fine-tuned checkpoint today, inside the model folder.
LEGACY_CHECKPOINT_FOLDER = "Fine_Tune_Model"


@dataclass(frozen=True)
class Loaded:
    predictor: Any  # a LeanPredictor or the torch Predictor: both have predict, engine, precision, threads
    checkpoint: Checkpoint
    etag: str
    cold: bool  # this call loaded the model
    load_s: float  # seconds spent downloading and loading it (0 when warm)
    download_s: float = 0.0  # the part of load_s spent fetching it from S3 (0 when on local disk already)


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

    def __init__(self, store: S3Store, scratch: Path, precision: str = "", engine: str = "auto") -> None:
        self._store, self._scratch, self._precision = store, scratch, precision
        self._engine = engines.resolve_engine(engine)
        self._current: tuple[tuple[str, str, str], Any] | None = None
        self._download_s = 0.0  # of the load in progress: Lambda's cold start is judged without it
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
        self._download_s = 0.0
        self._current = None  # free the old model before loading the new one
        predictor = self._lean(checkpoint, etag) if self._engine == engines.LEAN else None
        if predictor is None:
            predictor = self._torch(self._download(checkpoint, checkpoint.key, etag, checkpoint.sha256))
        self._current = (identity, predictor)
        load_s = time.perf_counter() - started
        log_event(log, "model_loaded", checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}", etag=etag,
                  seconds=round(load_s, 3), download_s=round(self._download_s, 3), engine=predictor.engine,
                  precision=predictor.precision, threads=predictor.threads)
        return Loaded(predictor, checkpoint, etag, cold=True, load_s=load_s, download_s=self._download_s)

    def _lean(self, checkpoint: Checkpoint, etag: str) -> LeanPredictor | None:
        """The checkpoint's export, checked and loaded; None when there is none (torch runs instead)."""
        where = f"s3://{checkpoint.bucket}/{export_name(checkpoint.key)}"
        document = self._store.get_json(checkpoint.bucket, manifest_name(checkpoint.key))
        if document is None:
            log_event(log, "export_missing", logging.WARNING, checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}",
                      hint="`cosmic export` the checkpoint and upload both files beside it: a cold start without "
                           "torch is 1-2 s faster")
            return None
        manifest = Manifest.parse(document, f"s3://{checkpoint.bucket}/{manifest_name(checkpoint.key)}")
        manifest.check_checkpoint(where, sha256=checkpoint.sha256, etag=etag)
        path = self._download(checkpoint, export_name(checkpoint.key), manifest.sha256, None)
        try:
            check_file(path, manifest, where)
        except CheckpointError:
            path.unlink(missing_ok=True)  # a corrupt file is never reused by the next invocation
            raise
        return LeanPredictor(path, engines.available_threads(), streams=engines.available_threads(), where=where)

    def _torch(self, path: Path) -> Any:
        """The torch Predictor (torch is imported here, and only here, by the native path)."""
        try:
            from services.worker.checkpoints import build_model, load_state_dict
            from services.worker.inference import Predictor
        except ModuleNotFoundError as exc:  # the lean image: no torch
            raise CheckpointError(f"{path.name} has no export and this worker has no {exc.name} to run it: "
                                  "`cosmic export` the checkpoint and upload both files beside it",
                                  checkpoint=path.name) from None
        precision = engines.torch_precision(self._engine, self._precision)
        return Predictor(build_model(load_state_dict(path)), precision)

    def _download(self, checkpoint: Checkpoint, key: str, version: str, sha256: str | None) -> Path:
        """``key`` (the checkpoint or its export) in the scratch folder, fetched once per ``version``."""
        name = Path(key).name
        tag = hashlib.sha256(f"{checkpoint.bucket}/{key}/{version}".encode()).hexdigest()[:16]
        folder = self._scratch / "cosmic-checkpoints" / tag
        path = folder / name
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{name}.{os.getpid()}.{threading.get_ident()}.partial")  # one per writer
            started = time.perf_counter()
            self._store.download(checkpoint.bucket, key, str(partial))
            partial.replace(path)
            self._download_s += time.perf_counter() - started
        if sha256 is not None:
            digest = sha256_of(path)
            if digest != sha256:
                path.unlink()
                raise CheckpointError(f"checkpoint s3://{checkpoint.bucket}/{checkpoint.key} has SHA-256 {digest}, "
                                      f"the event expects {checkpoint.sha256}",
                                      checkpoint=f"s3://{checkpoint.bucket}/{checkpoint.key}")
        return path

