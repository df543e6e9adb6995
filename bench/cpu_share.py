"""1 rank against 2 under Lambda's CPU share on the embedded stack: does the work scale with ranks?

Each sandbox gets Lambda's share for ``--memory-mb`` (1,769 MB: one vCPU, a cgroup quota here), so on
this 2-core machine two ranks have twice the CPU of one, as two Lambdas would. Jobs over the same
``--partitions`` 25MB demo partitions alternate between world size 1 and 2 (the order flips each round,
so a drift in the machine's load hits both); a warm-up job of each first loads the model in every
sandbox, so the rounds compare steady state. Speedup = median wall time at 1 rank / median at 2.

The machine is shared: the bench runs its own runtime with each sandbox's share reserved (the largest
cgroup weight, ``COSMIC_RUNTIME_CPU_RESERVE``), as Lambda guarantees it; without that, whatever else runs
sets the sandboxes' speed. The load average before and after is reported beside the figures.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/cpu_share.py [--rounds 3] [--partitions 4]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from _embedded import load_average, own_runtime, run_job
from _harness import write_report

from services.coordinator import config
from services.coordinator.service import Coordinator
from services.local.seeding import seed
from services.local.stack import Stack, ensure_stack, release
from services.ports import free_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory-mb", type=int, default=1769)
    parser.add_argument("--partitions", type=int, default=4, help="25MB partitions per job (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of (1 rank, 2 ranks)")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 2 <= args.partitions <= 64:
        parser.error("--rounds must be within 1..20 and --partitions within 2..64")
    load_before = load_average()
    print(f"embedded stack with 2 sandboxes of {args.memory_mb} MB; load {load_before}", file=sys.stderr)
    stack = ensure_stack(sandboxes=2, user="bench/cpu_share.py")
    port = free_port()
    try:
        seed(stack, ("25MB",), count=args.partitions)
        stack.export()
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{port}"
        coordinator = Coordinator(config.load())
        walls: dict[int, list[float]] = {1: [], 2: []}
        cpus: set[str] = set()
        with own_runtime(stack, port, args.memory_mb, sandboxes=2):
            for world in (2, 1):  # warm-up: every sandbox loads the model
                run_job(coordinator, stack, world, args.partitions, f"warmup-{world}")
            measure(coordinator, stack, args, walls, cpus)
    finally:
        release(stack)
    return report(args, walls, cpus, load_before)


def measure(coordinator: Coordinator, stack: Stack, args: argparse.Namespace, walls: dict[int, list[float]],
            cpus: set[str]) -> None:
    """Interleaved rounds of (1 rank, 2 ranks), the order flipped each round."""
    for round_ in range(args.rounds):
        for world in ((1, 2) if round_ % 2 == 0 else (2, 1)):
            job = run_job(coordinator, stack, world, args.partitions, f"round{round_}-w{world}")
            if job.state != "succeeded":
                raise RuntimeError(f"round {round_} world size {world}: job {job.state}")
            walls[world].append(job.wall_s)
            cpus |= {f"{r['cpu_vcpus']} vCPU by {r['cpu_enforced_by']}" for r in job.reports}
            print(f"round {round_} world size {world}: {job.wall_s:.2f} s wall, slowest rank "
                  f"{job.slowest_rank_s:.2f} s, {job.samples} samples, ${job.summary['usd_per_million_samples']:.3f} "
                  f"per million samples, {job.summary['samples_per_vcpu_s']:.1f} samples per vCPU-s", file=sys.stderr)


def report(args: argparse.Namespace, walls: dict[int, list[float]], cpus: set[str], load_before: str) -> int:
    load_after = load_average()
    stats = {world: {"min": min(w), "median": statistics.median(w), "max": max(w), "runs": w}
             for world, w in walls.items()}
    speedup = stats[1]["median"] / stats[2]["median"]
    for world in (1, 2):
        s = stats[world]
        print(f"world size {world}: wall min {s['min']:.2f} / median {s['median']:.2f} / max {s['max']:.2f} s")
    print(f"speedup 1 -> 2 ranks at {args.memory_mb} MB ({', '.join(sorted(cpus))}, share reserved): "
          f"{speedup:.2f}x (target >= 1.7x); load average {load_before} before, {load_after} after")
    write_report("cpu_share", {"memory_mb": args.memory_mb, "partitions": args.partitions, "rounds": args.rounds,
                               "wall_s": {str(k): v for k, v in stats.items()}, "speedup": speedup,
                               "cpu": sorted(cpus), "load_before": load_before, "load_after": load_after})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
