"""A worker invocation end to end: boto3 -> local Lambda runtime -> handler -> S3 (moto's server).

What it measures, per the worker's issue: for a 25MB partition, the cold invocation (a fresh
sandbox: imports, model load) and warm invocations, split into download, parse, model load,
inference and upload, and the share of a warm invocation that is not inference; then, per
partition size, the invocation's peak memory (the REPORT line's Max Memory Used) against the
legacy worker's loop on the same partition and weights, run in a fresh process in the same run
(``bench/legacy_worker.py``), whose time is the baseline of the ratios.

The cold start is measured per engine (``--engines``, default the lean engine and torch fp32,
today's path): the checkpoint's export is uploaded beside it, and each round starts a fresh
runtime per engine (``COSMIC_WORKER_ENGINE``), rounds interleaved; the cold split (Init
Duration, the model fetched from S3, then loaded from local disk, inference) is reported as
min/median/max over the rounds.

Run: ``.venv/bin/python bench/worker_invocation.py [--sizes 25MB 50MB 75MB 100MB] [--warm 3] [--cold-rounds 3]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from _harness import BENCH, OUT, REPO, children_killed_on_exit, write_report
from lambda_runtime import client, start_runtime

from services.local.s3server import S3Server
from services.worker.demo_assets import demo_checkpoint, demo_partitions

BUCKET = "cosmic-bench"
HANDLER = "services.worker.handler.handler"


def invoke(endpoint: str, event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    response = client(endpoint).invoke(FunctionName="cosmic-worker", Payload=json.dumps(event), LogType="Tail")
    body = json.loads(response["Payload"].read())
    if "FunctionError" in response:
        raise RuntimeError(f"invocation failed: {body}")
    report = base64.b64decode(response["LogResult"]).decode()
    fields = {name: float(value) for name, value in re.findall(r"(Duration|Max Memory Used|Init Duration): ([\d.]+)",
                                                                 report.split("REPORT", 1)[1])}
    return body, fields


def legacy(partition: Path, checkpoint: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(BENCH / "legacy_worker.py"), str(partition), str(checkpoint)],
                         check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["25MB", "50MB", "75MB", "100MB"])
    parser.add_argument("--warm", type=int, default=3, help="warm invocations of the 25MB partition (median)")
    parser.add_argument("--engines", nargs="+", default=["openvino", "torch-fp32"],
                        help="COSMIC_WORKER_ENGINE values whose cold starts are compared (the first one's "
                             "warm invocations and memory are reported)")
    parser.add_argument("--cold-rounds", type=int, default=3, help="fresh runtimes per engine, interleaved")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    print("preparing demo checkpoint and partitions (cached after the first run) ...", flush=True)
    checkpoint = demo_checkpoint()
    partitions = {size: demo_partitions(size, 1)[0] for size in args.sizes}
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      PYTHONPATH=os.pathsep.join([str(BENCH), str(REPO), os.environ.get("PYTHONPATH", "")]))
    report: dict[str, Any] = {}
    with children_killed_on_exit(), S3Server(log_path=OUT / "worker-s3.log") as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        store = boto3.client("s3", region_name="us-east-1")
        store.create_bucket(Bucket=BUCKET)
        store.upload_file(str(checkpoint), BUCKET, "model/demo.pt")
        for suffix in (".onnx", ".onnx.json"):  # the export, made beside the demo checkpoint
            store.upload_file(str(checkpoint) + suffix, BUCKET, "model/demo.pt" + suffix)
        for size, path in partitions.items():
            store.upload_file(str(path), BUCKET, f"{size}/1.pt")

        def event(size: str) -> dict[str, Any]:
            return {"version": 1, "job_id": "bench", "rank": 0, "world_size": 1, "data_bucket": BUCKET,
                    "partitions": [f"{size}/1.pt"], "result_bucket": BUCKET, "result_path": f"bench/{size}",
                    "batch_size": 512, "checkpoint": {"bucket": BUCKET, "key": "model/demo.pt"}}

        first = args.sizes[0]
        colds: dict[str, list[tuple[dict[str, Any], dict[str, float]]]] = {engine: [] for engine in args.engines}
        for round_index in range(args.cold_rounds):
            for engine in args.engines:
                os.environ["COSMIC_WORKER_ENGINE"] = engine  # the runtime's sandboxes inherit it
                proc, endpoint = start_runtime(1, f"worker-invocation-{engine}", handler=HANDLER)
                try:
                    colds[engine].append(invoke(endpoint, event(first)))
                    if round_index == 0 and engine == args.engines[0]:
                        warm_runs = [invoke(endpoint, event(first)) for _ in range(args.warm)]
                        warm, warm_report = sorted(warm_runs, key=lambda run: run[1]["Duration"])[len(warm_runs) // 2]
                        memory = {size: invoke(endpoint, event(size))[1]["Max Memory Used"] for size in args.sizes}
                finally:
                    proc.stop()
        cold, cold_report = sorted(colds[args.engines[0]], key=lambda run: run[1]["Duration"])[args.cold_rounds // 2]
    baseline = {size: legacy(path, checkpoint) for size, path in partitions.items()}

    timings = warm["timings_s"]
    not_inference = 1 - timings["infer"] / (warm_report["Duration"] / 1e3)
    base = baseline[first]
    base_total = base["load_s"] + base["infer_s"]
    print(f"\n{first} partition ({cold['num_samples']} samples), batch 512, one sandbox of this machine")
    print(f"{'invocation':<12} {'total ms':>9} {'download':>9} {'parse':>7} {'load':>7} {'infer':>7} {'upload':>7}")
    for label, body, fields in (("cold", cold, cold_report), ("warm", warm, warm_report)):
        t = body["timings_s"]
        print(f"{label:<12} {fields['Duration']:>9.0f} {t['download'] * 1e3:>9.0f} {t['parse'] * 1e3:>7.0f} "
              f"{t['load'] * 1e3:>7.0f} {t['infer'] * 1e3:>7.0f} {t['upload'] * 1e3:>7.0f}")
    imports_ms = cold["timings_s"].get("import", 0) * 1e3
    print(f"cold start ({args.engines[0]}): sandbox init {cold_report.get('Init Duration', 0):.0f} ms, imports "
          f"{imports_ms:.0f} ms, model fetch and load {cold['timings_s']['load'] * 1e3:.0f} ms (fetch "
          f"{cold['timings_s'].get('model_download', 0.0) * 1e3:.0f} ms)")
    print(f"\ncold starts, {args.cold_rounds} interleaved rounds (median, min-max), {first}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'engine':<12} {'init ms':>16} {'model fetch ms':>16} {'load from disk ms':>18} "
          f"{'init + load ms':>16} {'infer ms':>18} {'total ms':>18}")
    cold_split: dict[str, dict[str, list[float]]] = {}
    for engine, runs in colds.items():
        split = {"init": [fields.get("Init Duration", 0.0) for _, fields in runs],
                 "fetch": [body["timings_s"].get("model_download", 0.0) * 1e3 for body, _ in runs],
                 "load": [(body["timings_s"]["load"] - body["timings_s"].get("model_download", 0.0)) * 1e3
                          for body, _ in runs],
                 "infer": [body["timings_s"]["infer"] * 1e3 for body, _ in runs],
                 "total": [fields.get("Init Duration", 0.0) + fields["Duration"] for _, fields in runs]}
        split["init_plus_load"] = [a + b for a, b in zip(split["init"], split["load"], strict=True)]
        cold_split[engine] = split

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"

        print(f"{engine:<12} {cell(split['init']):>16} {cell(split['fetch']):>16} {cell(split['load']):>18} "
              f"{cell(split['init_plus_load']):>16} {cell(split['infer']):>18} {cell(split['total']):>18}")
    report["cold_by_engine"] = cold_split
    print(f"not inference in a warm invocation: {not_inference:.1%} (target < 15%)")
    print(f"legacy loop on the same partition: load {base['load_s'] * 1e3:.0f} ms + infer {base['infer_s'] * 1e3:.0f} "
          f"ms = {base_total * 1e3:.0f} ms; warm invocation is {base_total / (warm_report['Duration'] / 1e3):.2f}x "
          f"faster, its inference {base['infer_s'] / timings['infer']:.2f}x")
    print(f"\n{'partition':<10} {'ours MB':>8} {'legacy MB':>10} {'ratio':>6}")
    for size in args.sizes:
        print(f"{size:<10} {memory[size]:>8.0f} {baseline[size]['peak_rss_mb']:>10.0f} "
              f"{memory[size] / baseline[size]['peak_rss_mb']:>6.2f}")
    report.update(cold={"report": cold_report, "timings_s": cold["timings_s"]},
                  warm={"report": warm_report, "timings_s": timings}, not_inference_share=not_inference,
                  memory_mb=memory, legacy=baseline,
                  median_warm_ms=statistics.median(run[1]["Duration"] for run in warm_runs))
    write_report("worker_invocation", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
