"""The inference loop: the model held once per process, batches under ``torch.inference_mode``.

What the legacy loop paid for and this one does not: a DataLoader, ``no_grad`` instead of
inference mode, a profiler, and ``gc.collect()`` every batch. The CNN branch runs channels-last
(oneDNN's preferred layout for convolutions). Precision is a setting: ``fp32`` (default) or
``bf16``, which runs the ViT blocks in bfloat16 where the CPU supports it natively. Measured on
the demo set (2 cores, AVX512-BF16): fp32 ~480 samples/s, bf16 ~770 (1.6x), with a mean
absolute difference of 0.0013 from fp32, above the 1e-3 bound for a faster default, so bf16
stays opt-in.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import torch

from services.logs import event
from services.worker.model import RedshiftModel

log = logging.getLogger("cosmic.worker.inference")
PRECISIONS = ("fp32", "bf16")


def available_threads() -> int:
    """``COSMIC_THREADS`` when the runtime sets it, else the CPUs this process may run on."""
    configured = os.environ.get("COSMIC_THREADS")
    if configured:
        return max(1, int(configured))
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX); without it bf16 is emulated and slower."""
    if sys.platform != "linux":
        return False
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Predictor:
    """Redshifts for batches of images and magnitudes, from one loaded model."""

    def __init__(self, model: RedshiftModel, precision: str = "fp32", threads: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not cpu_has_bf16():
            event(log, "bf16_unavailable", logging.WARNING, fallback="fp32")
            precision = "fp32"
        self.precision = precision
        self.threads = threads or available_threads()
        torch.set_num_threads(self.threads)
        self.model = model.eval()
        self.model.cnn.to(memory_format=torch.channels_last)

    def predict(self, images: torch.Tensor, magnitudes: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Predicted redshifts, float32 ``[n]``."""
        out = np.empty(images.shape[0], dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                stop = start + batch_size
                out[start:stop] = self._forward(images[start:stop], magnitudes[start:stop]).reshape(-1).numpy()
        return out

    def _forward(self, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        model = self.model
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            tokens = model.vit.encode(images)
        image_features = model.vit.pool(tokens)
        cnn_features = model.cnn(images.contiguous(memory_format=torch.channels_last))
        return model.head(torch.cat([image_features, cnn_features, model.magnitudes(magnitudes.float())], dim=1))
