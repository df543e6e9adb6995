"""The lean engine: the exported model (ONNX) run by OpenVINO in float32, without torch.

An export lives beside its checkpoint: ``{checkpoint}.onnx`` and its manifest
``{checkpoint}.onnx.json`` (written by :mod:`services.worker.export`, which verified it against
the torch model). The manifest binds the two: the export's SHA-256 and size, and the SHA-256,
MD5 and size of the checkpoint it was made from. Before running an export the worker checks all
it can: the file's SHA-256 against the manifest, the checkpoint against the manifest (the event's
SHA-256, else S3's ETag where it is the MD5), and the model's inputs and output against the
redshift model's. Any mismatch is an :class:`~services.worker.errors.ExportError` naming the
file, never a prediction from the wrong model.

Why OpenVINO and not ONNX Runtime: README, "Which engine is the default" (faster inference on
this CPU, the same float32 answers; ONNX Runtime imports faster but infers slower).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.worker.errors import ExportError

#: What the export's inputs and output must be (a ``None`` dimension is the batch).
INPUTS: dict[str, tuple[int | None, ...]] = {"images": (None, 5, 32, 32), "magnitudes": (None, 5)}
OUTPUT: tuple[int | None, ...] = (None, 1)
MANIFEST_FORMAT = "cosmic-export/1"
_HEX64, _HEX32 = re.compile(r"^[0-9a-f]{64}$"), re.compile(r"^[0-9a-f]{32}$")


def export_name(checkpoint: str) -> str:
    """Where the export of ``checkpoint`` (a path or an S3 key) lives: beside it, ``.onnx`` appended."""
    return f"{checkpoint}.onnx"


def manifest_name(checkpoint: str) -> str:
    return f"{checkpoint}.onnx.json"


@dataclass(frozen=True)
class Manifest:
    """An export's manifest, validated field by field (a bad one is an ExportError naming it)."""

    sha256: str
    size: int
    checkpoint_sha256: str
    checkpoint_md5: str
    checkpoint_size: int
    verified: Mapping[str, Any]

    @classmethod
    def parse(cls, document: object, where: str) -> Manifest:
        if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
            raise ExportError(f"{where}: not an export manifest of format {MANIFEST_FORMAT}; re-run `cosmic export`",
                              export=where)
        try:
            manifest = cls(str(document["sha256"]), int(document["bytes"]), str(document["checkpoint_sha256"]),
                           str(document["checkpoint_md5"]), int(document["checkpoint_bytes"]),
                           dict(document.get("verified") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"{where}: manifest field {exc} missing or malformed; re-run `cosmic export`",
                              export=where) from None
        if not (_HEX64.match(manifest.sha256) and _HEX64.match(manifest.checkpoint_sha256)
                and _HEX32.match(manifest.checkpoint_md5)):
            raise ExportError(f"{where}: manifest digests are not lowercase hex; re-run `cosmic export`", export=where)
        return manifest

    def check_checkpoint(self, where: str, *, sha256: str | None, etag: str | None) -> None:
        """Refuse an export made from another checkpoint: by the event's SHA-256, else by an MD5 ETag."""
        plain_etag = (etag or "").strip('"').lower()
        if sha256 is not None and sha256.lower() != self.checkpoint_sha256:
            found = f"the event's checkpoint SHA-256 is {sha256}"
        elif sha256 is None and _HEX32.match(plain_etag) and plain_etag != self.checkpoint_md5:
            found = f"the checkpoint's ETag (MD5) is {plain_etag}"
        else:
            return
        raise ExportError(f"{where} was made from another checkpoint (SHA-256 {self.checkpoint_sha256}, "
                          f"MD5 {self.checkpoint_md5}); {found}. Re-run `cosmic export` on the checkpoint",
                          export=where)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, manifest: Manifest, where: str) -> None:
    """The export on disk is the one its manifest describes (size, then SHA-256)."""
    size = path.stat().st_size
    digest = sha256_of(path) if size == manifest.size else None
    if digest != manifest.sha256:
        found = f"SHA-256 {digest}" if digest else f"{size} bytes"
        raise ExportError(f"{where} has {found}, its manifest says SHA-256 {manifest.sha256} ({manifest.size} bytes): "
                          "corrupted or replaced; re-run `cosmic export`", export=where)


class LeanPredictor:
    """Redshifts from an exported model, with the torch Predictor's ``predict`` (numpy in, numpy out).

    Each batch is cut into one slice per stream, run side by side on OpenVINO's infer requests
    (``threads`` CPUs in all), as the torch Predictor runs one single-threaded stream per CPU.
    """

    engine = "openvino"
    precision = "fp32"

    def __init__(self, path: Path, threads: int, streams: int | None = None, where: str | None = None) -> None:
        import openvino  # here, not at module import: only a rank that runs an export pays for it

        where = where or str(path)
        self.threads = max(1, threads)
        self.streams = max(1, min(streams or 1, self.threads))
        core = openvino.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise ExportError(f"{where} cannot be read as an ONNX model ({_first_line(exc)}); re-run `cosmic export`",
                              export=where) from None
        _check_signature(model, where, openvino.Type.f32)
        # No pinning: OpenVINO pins its threads to the first cores of the process's mask without
        # knowing of other processes, so two one-vCPU sandboxes on one host (the local runtime)
        # both ran on core 0, at half speed each. The CPU share is the runtime's to set (a cgroup
        # quota, affinity; on Lambda, the sandbox's own VM); a single process infers as fast
        # unpinned (README, "1 rank against 2").
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads,
                  "PERFORMANCE_HINT": "THROUGHPUT" if self.streams > 1 else "LATENCY", "ENABLE_CPU_PINNING": False}
        if self.streams > 1:
            config["NUM_STREAMS"] = self.streams
        self._compiled = core.compile_model(model, "CPU", config)
        self._queue = openvino.AsyncInferQueue(self._compiled, self.streams)
        self._output = self._compiled.output(0)
        self._lock = threading.Lock()  # one queue and callback: callers in threads take turns

    def predict(self, images: np.ndarray, magnitudes: np.ndarray, batch_size: int = 512,
                after_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Predicted redshifts, float32 ``[n]``; ``after_batch(samples_done)`` as the torch Predictor's."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        magnitudes = np.ascontiguousarray(magnitudes, dtype=np.float32)
        total = images.shape[0]
        out = np.empty(total, dtype=np.float32)
        step = -(-batch_size // self.streams)

        def done(request: Any, span: tuple[int, int]) -> None:
            out[span[0]:span[1]] = request.get_tensor(self._output).data.reshape(-1)

        with self._lock:
            self._queue.set_callback(done)
            for batch_start in range(0, total, batch_size):
                batch_stop = min(batch_start + batch_size, total)
                for start in range(batch_start, batch_stop, step):
                    stop = min(start + step, batch_stop)
                    self._queue.start_async({"images": images[start:stop], "magnitudes": magnitudes[start:stop]},
                                            (start, stop))
                self._queue.wait_all()
                if after_batch is not None:
                    after_batch(batch_stop)
        return out


def _check_signature(model: Any, where: str, float32: Any) -> None:
    """The export's inputs and output are the redshift model's (names, float32, shapes)."""
    found = {port.get_any_name(): port for port in model.inputs}
    problems = []
    if set(found) != set(INPUTS):
        problems.append(f"inputs {sorted(found)}, expected {sorted(INPUTS)}")
    for name, expected in INPUTS.items():
        if name in found and (_shape(found[name]) != expected or found[name].get_element_type() != float32):
            problems.append(f"input {name} is {found[name].get_element_type()} {found[name].get_partial_shape()}, "
                            f"expected float32 {_draw(expected)}")
    if len(model.outputs) != 1 or _shape(model.outputs[0]) != OUTPUT:
        drawn = [str(port.get_partial_shape()) for port in model.outputs]
        problems.append(f"outputs {drawn}, expected {_draw(OUTPUT)}")
    if problems:
        raise ExportError(f"{where} does not fit the redshift model: {'; '.join(problems)}; re-run `cosmic export`",
                          export=where)


def _shape(port: Any) -> tuple[int | None, ...] | None:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return tuple(dim.get_length() if dim.is_static else None for dim in shape)


def _draw(shape: tuple[int | None, ...]) -> str:
    return "[" + ",".join("?" if dim is None else str(dim) for dim in shape) + "]"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
