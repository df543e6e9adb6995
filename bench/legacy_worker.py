"""One partition through the legacy worker's loop, in a fresh process: its wall time and peak RSS.

The baseline of ``bench/worker_invocation.py``. It does what the legacy script did per
invocation, minus S3: load the whole checkpoint, ``torch.load`` the whole partition, then the
legacy loop (DataLoader, ``no_grad``, profiler on, ``gc.collect`` per batch). Prints one JSON line.

Run: ``.venv/bin/python bench/legacy_worker.py PARTITION.pt CHECKPOINT.pt``
"""

from __future__ import annotations

import json
import sys
import time

import torch
from inference import legacy_loop
from torch.utils.data import TensorDataset

from services.worker.model import RedshiftModel
from services.worker.rankreport import peak_rss_mb


def main(partition_path: str, checkpoint_path: str) -> int:
    started = time.perf_counter()
    model = RedshiftModel()
    model.load_state_dict(torch.load(checkpoint_path, weights_only=True))
    model.eval()
    with torch.serialization.safe_globals([TensorDataset]):
        images, magnitudes, _ = torch.load(partition_path, weights_only=True).tensors
    loaded = time.perf_counter()
    legacy_loop(model, images, magnitudes)
    done = time.perf_counter()
    print(json.dumps({"load_s": loaded - started, "infer_s": done - loaded, "samples": int(images.shape[0]),
                      "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
