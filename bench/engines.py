"""Which engine a cold rank should use: start-up plus inference, each engine in fresh interpreters.

For each engine (OpenVINO and ONNX Runtime on the export, torch ``fp32`` and ``bf16-mlp`` on the
checkpoint: today's path) and each partition size (25MB: 1,278 samples; 100MB: 5,113), a fresh
interpreter does what a cold sandbox does, timing each part: the handler's imports with the
engine's (for torch, what the handler imported before issue 15: torch, the model and the
Predictor), loading the model from local disk (the export compiled, or the checkpoint built into
a Predictor), then one pass over the partition (the cold inference); then a second pass (warm
samples/s) and its peak RSS. Everything runs twice: with native bf16, and with it masked
(``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI``, which :func:`services.worker.engines.cpu_has_bf16`
honours too), the CPUs Lambda may give. ``bf16-mlp`` is skipped where bf16 is masked (it would be
fp32). Rounds are interleaved: every round runs every configuration once; min/median/max reported.

Needs the demo checkpoint and its export (``cosmic export``) in the cache folder; makes the
partitions there if missing. Run (alone: ``flock``):
``flock /tmp/cosmic-bench.lock .venv/bin/python bench/engines.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import OUT, write_report

REPO = Path(__file__).resolve().parents[1]
SIZES = {"25MB": 1278, "100MB": 5113}
ENGINES = ("openvino", "onnxruntime", "torch-fp32", "torch-bf16-mlp")
MASKED = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
BATCH = 512

_CHILD = r'''
import json, sys, time
started = time.perf_counter()
import services.worker.handler  # boto3, numpy, the worker's modules: what every sandbox imports
engine, checkpoint, partition_path, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if engine == "openvino":
    import openvino  # noqa: F401
elif engine == "onnxruntime":
    import onnxruntime
else:  # what the handler imported before the lean path: torch, the model, the Predictor
    import torch  # noqa: F401
    from services.worker.checkpoints import build_model, load_state_dict
    from services.worker.inference import Predictor
imported = time.perf_counter()
from pathlib import Path
from services.worker.engines import available_threads
from services.worker.data import load_partition
threads = available_threads()
if engine == "openvino":
    from services.worker.lean import LeanPredictor
    predict = LeanPredictor(Path(checkpoint + ".onnx"), threads, streams=threads).predict
elif engine == "onnxruntime":
    import numpy as np
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(checkpoint + ".onnx", options, providers=["CPUExecutionProvider"])
    def predict(images, magnitudes, batch_size):
        out = [session.run(None, {"images": images[i:i + batch_size],
                                  "magnitudes": magnitudes[i:i + batch_size].astype(np.float32)})[0].reshape(-1)
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)
else:
    predict = Predictor(build_model(load_state_dict(Path(checkpoint))), engine.removeprefix("torch-")).predict
loaded = time.perf_counter()
part = load_partition(Path(partition_path).read_bytes(), partition_path)
parsed = time.perf_counter()
first = predict(part.images, part.magnitudes, batch_size=batch)
cold_done = time.perf_counter()
predict(part.images, part.magnitudes, batch_size=batch)
warm_done = time.perf_counter()
from services.memory import peak_rss_kib  # VmHWM: ru_maxrss would include the parent's peak (vfork, exec)
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported, "parse_s": parsed - loaded,
                  "infer_cold_s": cold_done - parsed, "warm_sps": len(part) / (warm_done - cold_done),
                  "peak_rss_mb": peak_rss_kib() / 1024,
                  "first": [float(v) for v in first[:64]]}))
'''


def run_child(engine: str, checkpoint: Path, partition: Path, masked: bool) -> dict[str, float]:
    env = {**os.environ, **(MASKED if masked else {})}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, engine, str(checkpoint), str(partition), str(BATCH)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = wall  # interpreter start to exit, for reference
    result["cold_rank_s"] = result["import_s"] + result["load_s"] + result["infer_cold_s"]
    return result


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    from services.worker.demo_assets import demo_checkpoint, demo_partitions
    from services.worker.engines import cpu_has_bf16

    checkpoint = demo_checkpoint()  # and its export, made if missing
    partitions = {size: demo_partitions(size, 1)[0] for size in SIZES}
    modes = [False, True] if cpu_has_bf16() else [True]  # masked only, where the CPU has no bf16 anyway
    configs = [(engine, size, masked) for masked in modes for size in SIZES for engine in args.engines
               if not (masked and engine == "torch-bf16-mlp")]
    results: dict[tuple[str, str, bool], list[dict[str, float]]] = {config: [] for config in configs}
    load = os.getloadavg()
    for round_index in range(args.rounds):
        for config in configs:
            engine, size, masked = config
            results[config].append(run_child(engine, checkpoint, partitions[size], masked))
            print(f"round {round_index + 1}: {engine:<15} {size:<6} bf16 {'masked' if masked else 'on':<6} "
                  f"cold rank {results[config][-1]['cold_rank_s']:.2f} s", file=sys.stderr, flush=True)
    load = (load, os.getloadavg())
    report: dict[str, object] = {"load_average_before_after": load, "rounds": args.rounds, "batch": BATCH,
                                 "rows": []}
    print(f"\n{args.rounds} rounds, batch {BATCH}, load average {load[0][0]:.1f} before, {load[1][0]:.1f} after; "
          "medians (min-max)")
    print(f"{'bf16':<7}{'engine':<16}{'size':<7}{'imports s':>10}{'load s':>8}{'infer s':>9}{'cold rank s':>18}"
          f"{'warm sps':>10}{'peak MB':>9}")
    for config in configs:
        engine, size, masked = config
        rows = results[config]
        stats = {key: summary([row[key] for row in rows])
                 for key in ("import_s", "load_s", "infer_cold_s", "cold_rank_s", "warm_sps", "peak_rss_mb")}
        reference = results.get(("torch-fp32", size, masked))
        if reference and engine != "torch-fp32":
            diffs = [max(abs(a - b) for a, b in zip(row["first"], ref["first"], strict=True))
                     for row, ref in zip(rows, reference, strict=True)]
            stats["max_abs_diff_vs_torch_fp32"] = {"max": max(diffs)}
        cold = stats["cold_rank_s"]
        print(f"{'masked' if masked else 'on':<7}{engine:<16}{size:<7}{stats['import_s']['median']:>10.2f}"
              f"{stats['load_s']['median']:>8.2f}{stats['infer_cold_s']['median']:>9.2f}"
              f"{cold['median']:>8.2f} ({cold['min']:.2f}-{cold['max']:.2f})"
              f"{stats['warm_sps']['median']:>10.0f}{stats['peak_rss_mb']['median']:>9.0f}")
        report["rows"].append({"engine": engine, "size": size, "bf16": "masked" if masked else "on",  # type: ignore[attr-defined]
                               **stats})
    write_report("engines", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
