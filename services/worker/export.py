"""``cosmic export``: the model exported once, beside its checkpoint, for the lean engine.

A cold rank that runs the export never imports torch (1-2 s of every cold start); torch is needed
once, here. The checkpoint (a state_dict, ``.pt`` or safetensors) is loaded into the redshift
model, exported to ONNX (``torch.onnx.export(dynamo=True)``, the batch dimension dynamic), and
verified before anything is kept: the lean engine's predictions on a seeded probe batch against
the torch model's must differ by a mean under 1e-4 for a float32 engine (1e-3 for any reduced
precision) and a max under 1e-2, or the export is refused and nothing is written. Then
``{checkpoint}.onnx`` and its manifest ``{checkpoint}.onnx.json`` (the export's SHA-256, the
checkpoint's SHA-256 and MD5, the verification's figures) are written atomically, manifest last.
Called by ``cosmic convert-checkpoint`` and the demo's checkpoint fit too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.logs import event
from services.worker.checkpoints import build_model, load_state_dict
from services.worker.engines import available_threads
from services.worker.errors import CheckpointError, ExportError
from services.worker.lean import (
    INPUTS,
    MANIFEST_FORMAT,
    LeanPredictor,
    Manifest,
    export_name,
    manifest_name,
    sha256_of,
)
from services.worker.model import RedshiftModel
from services.worker.synthetic import partition

log = logging.getLogger("cosmic.worker.export")
#: Bounds on the lean engine's predictions against the torch model's on the probe batch.
MEAN_BOUND = {"fp32": 1e-4, "reduced": 1e-3}
MAX_BOUND = 1e-2
PROBE_SAMPLES = 256
ONNX_OPSET = 18


@dataclass(frozen=True)
class Exported:
    path: Path
    manifest: Path
    mean_abs_diff: float
    max_abs_diff: float
    seconds: float


class _TwoInputs(torch.nn.Module):
    """The model with two named inputs (the torch model takes one list), as the lean engine feeds it."""

    def __init__(self, model: RedshiftModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        return self.model([images, magnitudes])


def export(checkpoint: Path, *, probe_samples: int = PROBE_SAMPLES) -> Exported:
    """Export ``checkpoint`` beside it and verify it; raises ExportError (nothing written) if it disagrees."""
    checkpoint = Path(checkpoint)
    started = time.perf_counter()
    model = build_model(load_state_dict(checkpoint))  # CheckpointError names what is wrong with it
    target, manifest_path = Path(export_name(str(checkpoint))), Path(manifest_name(str(checkpoint)))
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        _to_onnx(model, partial)
        mean, worst, precision = verify(model, partial, probe_samples)
        document = _manifest(checkpoint, partial, precision, mean, worst, probe_samples)
        os.replace(partial, target)
        text = json.dumps(document, indent=2) + "\n"
        manifest_partial = manifest_path.with_name(f"{manifest_path.name}.{os.getpid()}.partial")
        manifest_partial.write_text(text)
        os.replace(manifest_partial, manifest_path)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    event(log, "model_exported", checkpoint=str(checkpoint), export=str(target), mean_abs_diff=mean,
          max_abs_diff=worst, seconds=round(seconds, 1))
    return Exported(target, manifest_path, mean, worst, seconds)


def _to_onnx(model: RedshiftModel, path: Path) -> None:
    probe = partition(1, 8)
    inputs = (torch.from_numpy(probe.images), torch.from_numpy(probe.magnitudes).float())
    batch = torch.export.Dim("batch")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # its progress lines are not ours to print
    with warnings.catch_warnings():  # the exporter's own deprecation notes, about its internals
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_TwoInputs(model).eval(), inputs, dynamo=True, verbose=False, optimize=True,
                                    opset_version=ONNX_OPSET, input_names=list(INPUTS), output_names=["redshift"],
                                    dynamic_shapes={"images": {0: batch}, "magnitudes": {0: batch}})
    if program is None:
        raise ExportError("torch.onnx.export returned no program", export=str(path))
    program.save(str(path))


def verify(model: RedshiftModel, path: Path, probe_samples: int = PROBE_SAMPLES) -> tuple[float, float, str]:
    """The export's (mean, max) |difference| from the torch model on a seeded probe batch, and the
    engine's precision; raises ExportError when over the bounds."""
    probe = partition(90_210, probe_samples)
    with torch.inference_mode():
        expected = model([torch.from_numpy(probe.images), torch.from_numpy(probe.magnitudes)]).reshape(-1).numpy()
    lean = LeanPredictor(path, threads=available_threads(), where=str(path))
    got = lean.predict(probe.images, probe.magnitudes, batch_size=128)
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    mean, worst = float(diff.mean()), float(diff.max())
    bound = MEAN_BOUND["fp32" if lean.precision == "fp32" else "reduced"]
    if not (np.isfinite(got).all() and mean < bound and worst < MAX_BOUND):
        raise ExportError(f"{path}: the {lean.engine} {lean.precision} export disagrees with the torch model on "
                          f"{probe_samples} probe samples: mean |diff| {mean:.2e} (bound {bound:.0e}), max "
                          f"{worst:.2e} (bound {MAX_BOUND:.0e}); refused, nothing written", export=str(path))
    return mean, worst, lean.precision


def _manifest(checkpoint: Path, export_file: Path, precision: str, mean: float, worst: float,
              probe_samples: int) -> dict[str, Any]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(checkpoint, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return {"format": MANIFEST_FORMAT, "file": Path(export_name(checkpoint.name)).name,
            "sha256": sha256_of(export_file), "bytes": export_file.stat().st_size,
            "checkpoint": checkpoint.name, "checkpoint_sha256": sha.hexdigest(), "checkpoint_md5": md5.hexdigest(),
            "checkpoint_bytes": checkpoint.stat().st_size,
            "verified": {"engine": LeanPredictor.engine, "precision": precision, "probe_samples": probe_samples,
                         "mean_abs_diff": mean, "max_abs_diff": worst},
            "made_by": {"torch": torch.__version__, "opset": ONNX_OPSET}}


def current(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` already has an export made from exactly it (its manifest says so)."""
    manifest_path = Path(manifest_name(str(checkpoint)))
    target = Path(export_name(str(checkpoint)))
    if not (manifest_path.is_file() and target.is_file()):
        return False
    try:
        manifest = Manifest.parse(json.loads(manifest_path.read_text()), str(manifest_path))
    except (ExportError, ValueError):
        return False
    return sha256_of(Path(checkpoint)) == manifest.checkpoint_sha256 and sha256_of(target) == manifest.sha256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a state_dict (.pt or .safetensors; a legacy pickled model: "
                                                      "run `cosmic convert-checkpoint` instead)")


def run(args: argparse.Namespace) -> int:
    try:
        done = export(args.checkpoint)
    except (CheckpointError, OSError) as exc:
        print(f"cosmic export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint}: verified against the torch model (mean |diff| {done.mean_abs_diff:.1e}, "
          f"max {done.max_abs_diff:.1e}) in {done.seconds:.0f} s")
    print(f"wrote {done.path} and {done.manifest.name}: upload both beside the checkpoint")
    return 0
