"""A job's overhead on the embedded stack: what the coordinator adds around its slowest rank.

Overhead = the job's wall time (submit to summary written) minus the slowest rank's invocation
(its REPORT duration): the baseline measured in the same run, since no job can end before its
slowest rank. Planning, fan-out, S3 state, the workers' collective and the summary are all in the
difference. World size 8 over eight 25MB demo partitions, communicator on (every rank runs at
once, so the runtime gets 8 sandboxes). A warm-up job first loads the model in every sandbox,
so that the measured job is about steady state, not about cold starts.

Run: ``.venv/bin/python bench/job_overhead.py [--world-size 8] [--runs 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _harness import write_report

from services.coordinator import config
from services.coordinator.payload import JobRequest
from services.coordinator.service import Coordinator
from services.coordinator.state import TERMINAL
from services.local.seeding import seed
from services.local.stack import ensure_stack


def run_job(coordinator: Coordinator, world_size: int, label: str) -> tuple[float, float, str]:
    request = JobRequest(bucket="cosmicai-data", file_limit=world_size, S3_object_name="Anomaly Detection",
                         result_path=f"bench/overhead/{label}", data_bucket="cosmicai-data", data_prefix="25MB",
                         world_size=world_size)
    started = time.perf_counter()
    job_id, _, _ = coordinator.submit(request)
    while coordinator.status(job_id)["state"] not in TERMINAL:
        time.sleep(0.02)
    wall = time.perf_counter() - started
    status = coordinator.status(job_id)
    slowest = max(a["duration_ms"] or 0 for rank in status["ranks"] for a in rank["attempts"]) / 1e3
    return wall, slowest, status["state"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="measured jobs after the warm-up (median reported)")
    args = parser.parse_args(argv)
    print(f"starting the embedded stack with {args.world_size} sandboxes and seeding ...", file=sys.stderr)
    stack = ensure_stack(sandboxes=args.world_size, fresh=True)
    try:
        seed(stack, ("25MB",), count=args.world_size)
        stack.export()
        coordinator = Coordinator(config.load())
        run_job(coordinator, args.world_size, "warmup")
        runs = [run_job(coordinator, args.world_size, f"run{n}") for n in range(args.runs)]
    finally:
        stack.stop()
    rows = [{"wall_s": wall, "slowest_rank_s": slowest, "overhead_s": wall - slowest,
             "overhead_share": (wall - slowest) / wall, "state": state} for wall, slowest, state in runs]
    for row in rows:
        print(f"wall {row['wall_s']:.2f} s  slowest rank {row['slowest_rank_s']:.2f} s  "
              f"overhead {row['overhead_s']:.2f} s ({row['overhead_share']:.1%})  {row['state']}")
    share = statistics.median(row["overhead_share"] for row in rows)
    print(f"median overhead at world size {args.world_size}: {share:.1%} of the job (target < 10%)")
    write_report("job_overhead", {"world_size": args.world_size, "runs": rows, "median_overhead_share": share})
    return 0 if all(row["state"] == "succeeded" for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
