"""Demo data where the users' payload looks: the checkpoint in the model folder, the partitions
under ``{size}/{i}.pt``, in a bucket made if missing.

Used by the embedded stack (:func:`seed`) and by compose's init step (:func:`seed_store`) alike.
This module never imports torch: the data and checkpoint are made by a child process
(``python -m services.worker.demo_assets``), then uploaded.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.local.processes import ROOT, python
from services.local.stack import STATE_BUCKET, EmbeddedError, Stack
from services.logs import event

log = logging.getLogger("cosmic.coordinator.embedded")

#: The model folder the legacy payload names (``S3_object_name``); the checkpoint goes in its Fine_Tune_Model/.
MODEL_FOLDER = "Anomaly Detection"
ASSETS_TIMEOUT = 900.0


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed_store` put in S3: the bucket, the checkpoint's key, the partitions' keys."""

    bucket: str
    checkpoint_key: str
    partitions: dict[str, list[str]]
    uploaded: int


def seed(stack: Stack, sizes: tuple[str, ...] = ("25MB",), count: int = 4) -> Seeded:
    """Make the demo checkpoint and partitions and upload them to the stack's ``cosmicai-data``."""
    from services.s3store import S3Store

    return seed_store(S3Store(_s3_client(stack)), STATE_BUCKET, sizes, count)


def seed_store(store: Any, bucket: str, sizes: tuple[str, ...] = ("25MB",), count: int = 4) -> Seeded:
    """Make the demo checkpoint and partitions (a child process: torch stays out of here) and upload
    them to ``bucket`` (made if missing) where the example payload looks: the model folder and
    ``{size}/{i}.pt``. Used by the embedded stack and by compose's init step alike.

    Objects already there with the same size are skipped, so seeding again is cheap.
    """
    assets = _make_assets(sizes, count)
    store.ensure_bucket(bucket)
    checkpoint = Path(assets["checkpoint"])
    uploads = [(checkpoint, f"{MODEL_FOLDER}/Fine_Tune_Model/{checkpoint.name}")]
    # its export beside it (the lean engine's; the manifest last, as the worker reads it first)
    uploads += [(beside, f"{MODEL_FOLDER}/Fine_Tune_Model/{beside.name}")
                for beside in (checkpoint.with_name(checkpoint.name + ".onnx"),
                               checkpoint.with_name(checkpoint.name + ".onnx.json")) if beside.is_file()]
    keys: dict[str, list[str]] = {}
    for size, paths in assets["partitions"].items():
        keys[size] = [f"{size}/{Path(path).name}" for path in paths]
        uploads += [(Path(path), key) for path, key in zip(paths, keys[size], strict=True)]
    uploaded = store.upload_changed(bucket, uploads)
    event(log, "embedded_seeded", bucket=bucket, objects=len(uploads), uploaded=uploaded)
    return Seeded(bucket, uploads[0][1], keys, uploaded)


def _make_assets(sizes: tuple[str, ...], count: int) -> dict[str, Any]:
    """Run ``python -m services.worker.demo_assets``; its progress lines go straight to our stderr."""
    command = python("services.worker.demo_assets", "--sizes", *sizes, "--count", str(count), "--json")
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                              timeout=ASSETS_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise EmbeddedError(f"making the demo data took over {ASSETS_TIMEOUT:.0f} s: {' '.join(command)}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise EmbeddedError(f"making the demo data failed (exit {done.returncode}): {' '.join(command)}")
    return dict(json.loads(lines[-1]))


def _s3_client(stack: Stack) -> Any:
    """The stack's own S3, whatever this process's AWS variables say (see :func:`services.s3store.s3_client`)."""
    return stack.s3_client()
