"""The planner's calibration, measured on the embedded stack, and its prediction checked against real runs.

Every run is cold, as nearly every rank of the seed's table is: the bench starts a fresh local Lambda
runtime (its own, on one port the in-process coordinator calls) with the run's memory size, runs one
job, and stops it. Rounds interleave the runs, so that a change in the machine's load hits them all.

- **Calibration**: one rank over ``--partitions`` 25MB partitions at 1,769 MB (one vCPU) gives samples
  per vCPU-second (parsing and inference), start-up (init, model load), download rate, upload and the
  coordinator's overhead; the same at 3,538 MB (two vCPUs) gives what a second vCPU adds. Medians over
  the rounds are written to ``--out`` (default ``services/coordinator/calibration.json``).
- **Validation**: the planner's prediction from that calibration against measured runs at two other
  configurations (884 MB with 2 ranks, 3,538 MB with 1 rank over twice the partitions): mean rank
  duration (REPORT, init excluded) and wall time less init (the runtime starts its sandboxes before the
  job, so the embedded wall time has no init in it), each with its error.

The machine is shared: the load average is reported beside the figures.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/calibrate.py [--rounds 2] [--partitions 4]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from _embedded import Finished, load_average, own_runtime, run_job
from _harness import REPO, write_report

from services.coordinator import config
from services.coordinator.calibration import DEFAULT_PATH, SCHEMA, Calibration, save_calibration
from services.coordinator.planner import PlanRequest, predict
from services.coordinator.pricing import load_prices
from services.coordinator.service import Coordinator
from services.local.seeding import seed
from services.local.stack import ensure_stack, release
from services.ports import free_port

PARTITION_MB = 25.0
#: What each MB of partition adds to the worker's peak memory: the README's `bench/worker_invocation.py`
#: figures (peak RSS 802, 817, 941, 973 MB at 25, 50, 75, 100MB: 2.3 MB per MB); this bench runs 25MB only.
MEMORY_PER_PARTITION_MB = 2.3
#: Bytes of input per sample (LEGACY.md): a partition's size, for the download rate.
BYTES_PER_SAMPLE = 20_520


def cold_run(coordinator: Coordinator, stack, port: int, memory_mb: int, world: int, partitions: int,
             label: str) -> Finished:
    """One job on a runtime started for it (cold sandboxes) with ``memory_mb``; the runtime is stopped after."""
    # two sandboxes always: the coordinator reads the function's capacity, and 2 is the largest world size here
    with own_runtime(stack, port, memory_mb, sandboxes=2):
        job = run_job(coordinator, stack, world, partitions, label)
    if job.state != "succeeded":
        raise RuntimeError(f"{label}: job {job.state}")
    job.memory_mb = memory_mb
    report = job.reports[0]
    print(f"{label}: wall {job.wall_s:.2f} s, rank {job.slowest_rank_s:.2f} s, init "
          f"{(report['init_duration_ms'] or 0) / 1e3:.2f} s, CPU {report['cpu_vcpus']} vCPU by "
          f"{report['cpu_enforced_by']}", file=sys.stderr)
    return job


def figures(job: Finished) -> dict[str, float]:
    """Per-vCPU figures of a one-rank cold job."""
    doc, report = job.documents[0], job.reports[0]
    vcpus = float(report["cpu_vcpus"])
    megabytes = job.samples * BYTES_PER_SAMPLE / 2**20
    return {"vcpus": vcpus, "samples_per_s": job.samples / (doc["parse_s"] + doc["infer_s"]),
            "init_vcpu_s": (report["init_duration_ms"] or 0) / 1e3 * min(vcpus, 1.0),
            "load_vcpu_s": doc["load_s"] * min(vcpus, 1.0), "download_mb_per_s": megabytes / doc["download_s"],
            "upload_s": doc["upload_s"], "overhead_s": job.wall_s - job.slowest_rank_s,
            "peak_memory_mb": float(doc["peak_rss_mb"])}


def calibrate(one: list[Finished], two: list[Finished], load: str, command: str) -> Calibration:
    at_one = [figures(job) for job in one]
    at_two = [figures(job) for job in two]

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    rate_one, rate_two = median(at_one, "samples_per_s"), median(at_two, "samples_per_s")
    vcpus_two = median(at_two, "vcpus")
    efficiency = min(1.0, max(0.0, (rate_two / rate_one - 1) / (vcpus_two - 1))) if vcpus_two > 1 else 0.0
    return Calibration(
        schema=SCHEMA, measured_on=f"2 vCPU AMD EPYC, Linux, Python 3.11, {time.strftime('%Y-%m-%d')}, "
                                   f"load average {load} (a shared machine)",
        command=command, note="cold one-rank jobs on the embedded stack, the local runtime enforcing Lambda's "
                              "CPU share; medians over interleaved rounds",
        memory_mb=1769, samples_per_vcpu_s=rate_one / median(at_one, "vcpus"),
        init_vcpu_s=median(at_one, "init_vcpu_s"), load_vcpu_s=median(at_one, "load_vcpu_s"),
        download_mb_per_s=median(at_one, "download_mb_per_s"), upload_s=median(at_one, "upload_s"),
        job_overhead_s=median(at_one, "overhead_s"), parallel_efficiency=round(efficiency, 3),
        peak_memory_mb=median(at_one, "peak_memory_mb"), peak_partition_mb=PARTITION_MB,
        memory_per_partition_mb=MEMORY_PER_PARTITION_MB)


def validate(jobs: dict[str, list[Finished]], calibration: Calibration, partitions: dict[str, int]) -> list[dict]:
    prices, rows = load_prices(), []
    for label, runs in jobs.items():
        memory, world = runs[0].memory_mb, runs[0].world_size
        request = PlanRequest(partition_mb=PARTITION_MB, partitions=partitions[label], deadline_s=3600)
        predicted = predict(request, memory, world, calibration, prices)
        duration = statistics.median(statistics.mean(r["duration_ms"] / 1e3 for r in job.reports) for job in runs)
        wall = statistics.median(job.wall_s for job in runs)
        wall_predicted = predicted["wall_s"] - predicted["cold_start_s"]
        rows.append({"memory_mb": memory, "world_size": world, "partitions": partitions[label],
                     "duration_predicted_s": predicted["duration_s"], "duration_measured_s": duration,
                     "duration_error": predicted["duration_s"] / duration - 1,
                     "wall_predicted_s": wall_predicted, "wall_measured_s": wall,
                     "wall_error": wall_predicted / wall - 1, "runs": [job.wall_s for job in runs],
                     "usd_per_million_predicted": predicted["usd_per_million_samples"],
                     "usd_per_million_measured": statistics.median(
                         job.summary["usd_per_million_samples"] for job in runs),
                     "samples_per_vcpu_s_measured": statistics.median(
                         job.summary["samples_per_vcpu_s"] for job in runs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=4, help="25MB partitions of a calibration job")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH, help="where the calibration JSON goes")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 10 or not 2 <= args.partitions <= 32:
        parser.error("--rounds must be within 1..10 and --partitions within 2..32")
    command = "bench/calibrate.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = load_average()
    stack = ensure_stack(sandboxes=2, user="bench/calibrate.py")
    port = free_port()  # every run's runtime listens here, where the coordinator calls Lambda
    plan = {"cal-1769": (1769, 1, args.partitions), "cal-3538": (3538, 1, args.partitions),
            "val-884-w2": (884, 2, args.partitions), "val-3538-p2x": (3538, 1, 2 * args.partitions)}
    jobs: dict[str, list[Finished]] = {label: [] for label in plan}
    try:
        seed(stack, ("25MB",), count=2 * args.partitions)
        stack.export()
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{port}"
        coordinator = Coordinator(config.load())
        for round_ in range(args.rounds):
            order = list(plan) if round_ % 2 == 0 else list(reversed(plan))
            for label in order:
                memory, world, partitions = plan[label]
                jobs[label].append(cold_run(coordinator, stack, port, memory, world, partitions,
                                            f"round{round_}-{label}"))
    finally:
        release(stack)
    load_after = load_average()
    calibration = calibrate(jobs["cal-1769"], jobs["cal-3538"], f"{load_before} -> {load_after}", command)
    written = save_calibration(calibration, args.out)
    print(f"calibration written to {written.relative_to(REPO) if written.is_relative_to(REPO) else written}:")
    for name, value in calibration.to_json().items():
        print(f"  {name}: {value}")
    rows = validate({k: v for k, v in jobs.items() if k.startswith("val")}, calibration,
                    {label: plan[label][2] for label in plan})
    print("\n| memory | ranks | partitions | rank duration predicted / measured (s) | error | wall less init "
          "predicted / measured (s) | error |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['memory_mb']} MB | {row['world_size']} | {row['partitions']} | "
              f"{row['duration_predicted_s']:.2f} / {row['duration_measured_s']:.2f} | {row['duration_error']:+.1%} | "
              f"{row['wall_predicted_s']:.2f} / {row['wall_measured_s']:.2f} | {row['wall_error']:+.1%} |")
    for row in rows:
        print(f"{row['memory_mb']} MB x {row['world_size']}: $ per million samples predicted "
              f"{row['usd_per_million_predicted']:.3f}, measured {row['usd_per_million_measured']:.3f} (billed "
              f"estimate); {row['samples_per_vcpu_s_measured']:.1f} samples per vCPU-second measured")
    print(f"\nload average {load_before} before, {load_after} after (a shared machine)")
    write_report("calibrate", {"calibration": calibration.to_json(), "validation": rows,
                               "load_before": load_before, "load_after": load_after})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
