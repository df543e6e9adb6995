"""Inference throughput at batch 512: our loop against the legacy loop, same model and data.

The baseline reproduces what the legacy worker ran (shared/LEGACY.md): a DataLoader over a
TensorDataset, ``torch.no_grad``, the profiler on, ``gc.collect()`` every batch. Ours is
:class:`services.worker.inference.Predictor` in each precision. Both run in this process on the
same synthetic partition and the same weights (the demo checkpoint's fit, so that the accuracy
columns mean something), one after the other, each after a warm-up batch.

Run: ``.venv/bin/python bench/inference.py [--samples 2556] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np
import torch
from _harness import write_report
from torch.utils.data import DataLoader, TensorDataset

from services.worker.accuracy import redshift_metrics
from services.worker.demo_assets import FIT_STEPS, fit
from services.worker.inference import Predictor, cpu_has_bf16
from services.worker.synthetic import partition

BATCH = 512


def legacy_loop(model: torch.nn.Module, images: torch.Tensor, magnitudes: torch.Tensor) -> np.ndarray:
    outputs = []
    loader = DataLoader(TensorDataset(images, magnitudes), batch_size=BATCH)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        for batch_images, batch_magnitudes in loader:
            outputs.append(model([batch_images, batch_magnitudes.float()]).reshape(-1))
            gc.collect()
    return torch.cat(outputs).numpy()


def timed(run: object, samples: int, repeats: int) -> tuple[float, np.ndarray]:
    rates, result = [], np.empty(0)
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()  # type: ignore[operator]
        rates.append(samples / (time.perf_counter() - started))
    return statistics.median(rates), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2556, help="samples (default 2556, a 50MB partition)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loop, median reported")
    parser.add_argument("--fit-steps", type=int, default=FIT_STEPS, help=f"demo fit steps (default {FIT_STEPS})")
    args = parser.parse_args(argv)
    model, _ = fit(steps=args.fit_steps, samples=2048)
    data = partition(77, args.samples)
    truth = data.redshifts.numpy()  # type: ignore[union-attr]
    rows = {}
    model.eval()
    legacy_loop(model, data.images[:BATCH], data.magnitudes[:BATCH])  # warm-up
    rows["legacy loop"] = timed(lambda: legacy_loop(model, data.images, data.magnitudes), args.samples, args.repeats)
    for precision in ("fp32", "bf16") if cpu_has_bf16() else ("fp32",):
        predictor = Predictor(model, precision=precision)
        predictor.predict(data.images[:BATCH], data.magnitudes[:BATCH])
        rows[f"ours {precision}"] = timed(lambda p=predictor: p.predict(data.images, data.magnitudes, BATCH),
                                          args.samples, args.repeats)
    reference = rows["legacy loop"]
    print(f"{args.samples} samples, batch {BATCH}, {torch.get_num_threads()} threads")
    print(f"{'loop':<14} {'samples/s':>10} {'vs legacy':>10} {'mean |diff|':>12} {'max |diff|':>11} "
          f"{'MAE':>7} {'NMAD':>7}")
    report = {}
    for name, (rate, predicted) in rows.items():
        diff = np.abs(predicted - reference[1])
        metrics = redshift_metrics(predicted, truth)
        print(f"{name:<14} {rate:>10.0f} {rate / reference[0]:>9.2f}x {diff.mean():>12.5f} {diff.max():>11.5f} "
              f"{metrics['mae']:>7.4f} {metrics['nmad']:>7.4f}")
        report[name] = {"samples_per_s": rate, "ratio": rate / reference[0], "mean_abs_diff": float(diff.mean()),
                        "max_abs_diff": float(diff.max()), **metrics}
    write_report("inference", {"samples": args.samples, "batch": BATCH, "rows": report})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
