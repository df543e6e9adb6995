"""Inference throughput at batch 512: our loop against the legacy loop, same model and data.

The baseline reproduces what the legacy worker ran (shared/LEGACY.md): a DataLoader over a
TensorDataset, ``torch.no_grad``, the profiler on, ``gc.collect()`` every batch. Ours is
:class:`services.worker.inference.Predictor` in each precision (bf16 ones only on a CPU with native
bfloat16), and once with one stream of intra-op threads instead of one single-threaded stream per
CPU, to show what the streams add. All run in this process on the same synthetic partition and
the same weights (the demo checkpoint's fit, so that the accuracy columns mean something), each
after a warm-up batch. Timing is round-robin: every repeat times each configuration once, so a
neighbour's load hits all of them alike; the table reports medians, and each ratio is the median
of the per-round ratios to the legacy loop of the same round.

Columns: samples/s; ratio to the legacy loop; mean and max |prediction - fp32 model| (the legacy
loop's own predictions are the fp32 reference); MAE and NMAD against the true redshifts
(:func:`services.accuracy.redshift_metrics`).

Run: ``.venv/bin/python bench/inference.py [--samples 2556] [--repeats 5] [--fit-steps N]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from _harness import write_report
from torch.utils.data import DataLoader, TensorDataset

from services.accuracy import redshift_metrics
from services.worker.demo_assets import FIT_STEPS, fit
from services.worker.inference import Predictor, available_threads, cpu_has_bf16, resolve_precision
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


def configurations(model: torch.nn.Module) -> dict[str, Callable[[torch.Tensor, torch.Tensor], np.ndarray]]:
    """Name -> run(images, magnitudes); the legacy loop first. Threads are set before each run."""
    threads = available_threads()

    def legacy(images: torch.Tensor, magnitudes: torch.Tensor) -> np.ndarray:
        torch.set_num_threads(threads)  # the legacy worker's torch default: all CPUs, intra-op
        return legacy_loop(model, images, magnitudes)

    runs = {"legacy loop": legacy}
    precisions = ["fp32", *(["bf16-mlp", "bf16"] if cpu_has_bf16() else [])]
    default = resolve_precision("auto")
    for precision in precisions:
        label = f"{precision} (default)" if precision == default else precision
        runs[label] = Predictor(model, precision).predict  # one stream per CPU
    runs[f"{default}, 1 stream"] = Predictor(model, default, streams=1).predict
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2556, help="samples (default 2556, a 50MB partition)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds, medians reported (default 5)")
    parser.add_argument("--fit-steps", type=int, default=FIT_STEPS, help=f"demo fit steps (default {FIT_STEPS})")
    args = parser.parse_args(argv)
    model, _ = fit(steps=args.fit_steps, samples=2048)
    model.eval()
    data = partition(77, args.samples)
    truth = data.redshifts
    data = type(data)(torch.from_numpy(data.images), torch.from_numpy(data.magnitudes), None)  # the legacy loop's
    runs = configurations(model)
    predictions = {}
    for name, run in runs.items():  # warm-up batch, then the predictions the accuracy columns use
        run(data.images[:BATCH], data.magnitudes[:BATCH])
        predictions[name] = run(data.images, data.magnitudes)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run(data.images, data.magnitudes)
            rates[name].append(args.samples / (time.perf_counter() - started))
    reference = predictions["legacy loop"]
    print(f"{args.samples} samples, batch {BATCH}, {available_threads()} CPUs, native bf16: {cpu_has_bf16()}, "
          f"{args.repeats} rounds (medians)")
    print(f"{'loop':<22} {'samples/s':>10} {'vs legacy':>10} {'mean |diff|':>12} {'max |diff|':>11} "
          f"{'MAE':>8} {'NMAD':>8}")
    report = {}
    for name in runs:
        rate = statistics.median(rates[name])
        ratio = statistics.median(r / base for r, base in zip(rates[name], rates["legacy loop"], strict=True))
        diff = np.abs(predictions[name] - reference)
        metrics = redshift_metrics(predictions[name], truth)
        print(f"{name:<22} {rate:>10.0f} {ratio:>9.2f}x {diff.mean():>12.5f} {diff.max():>11.5f} "
              f"{metrics['mae']:>8.5f} {metrics['nmad']:>8.5f}")
        report[name] = {"samples_per_s": rate, "ratio": ratio, "rates": rates[name],
                        "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()), **metrics}
    write_report("inference", {"samples": args.samples, "batch": BATCH, "rows": report})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
