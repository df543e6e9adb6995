"""``cosmic status [JOB_ID]``: one job's state and ranks, or the list of jobs; ``--follow`` draws the
job's bar (samples, rate, ETA) until it ends, then its state."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import handles_errors
from services.client.errors import CommandError

RANK_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", nargs="?", default=None, type=argtypes.job_id,
                        help="a job id; without it, the latest jobs")
    parser.add_argument("--limit", type=argtypes.whole(1, 1000), default=20, help="jobs listed, 1 to 1000 (default 20)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="with a job id: a live progress line (samples, rate, ETA) until the job ends")


@handles_errors("status")
def run(args: argparse.Namespace) -> int:
    client = ApiClient()
    if args.follow and not args.job_id:
        raise CommandError("--follow follows one job: give its id (`cosmic status JOB_ID --follow`)")
    if args.job_id:
        status = client.wait(args.job_id, stream=sys.stdout) if args.follow else client.status(args.job_id)
        print(describe_job(status))
    else:
        print(describe_jobs(client.list_jobs(args.limit)))
    return 0


def describe_job(status: dict[str, Any]) -> str:
    counts = status.get("ranks_by_state") or {}
    ranks = ", ".join(f"{counts[state]} {state}" for state in RANK_STATES if counts.get(state)) or "none yet"
    lines = [f"job {status['job_id']}: {status['state']}",
             f"  world size {status['world_size']}, {status['partitions']} partitions, function {status['function']}"
             f"{', communicator' if status.get('communicator') else ''}",
             f"  ranks: {ranks}", *_progress(status), f"  results: {status['result']}",
             f"  submitted {_when(status['submitted_at'])}"
             + (f", finished {_when(status['finished_at'])}" if status.get("finished_at") else "")]
    if status.get("error"):
        lines.append(f"  error: {status['error']}")
    lines += [f"  rank {rank} failed: {error}" for rank, error in (status.get("failed_ranks") or {}).items()]
    if status.get("summary_key"):
        lines.append(f"  report: cosmic report {status['job_id']}")
    return "\n".join(lines)


def _progress(status: dict[str, Any]) -> list[str]:
    """The samples line and the ranks' phases, when the workers report them."""
    progress = status.get("progress") or {}
    lines = []
    if progress.get("samples_done") or progress.get("samples_expected"):
        expected = progress.get("samples_expected")
        line = f"  samples: {progress.get('samples_done', 0):,}" + (f" of ~{expected:,}" if expected else "")
        if progress.get("samples_per_s"):
            line += f", {progress['samples_per_s']:,.1f}/s"
        if progress.get("eta_s") is not None and status.get("state") not in ("succeeded", "failed", "cancelled"):
            line += f", ETA {progress['eta_s']:.0f} s"
        lines.append(line)
    phases: dict[str, int] = {}
    for rank in status.get("ranks") or []:
        if rank.get("phase"):
            phases[rank["phase"]] = phases.get(rank["phase"], 0) + 1
    if phases and set(phases) != {"done"}:
        lines.append("  phases: " + ", ".join(f"{count} {phase.replace('_', ' ')}" for phase, count in phases.items()))
    return lines


def describe_jobs(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "no jobs yet (`cosmic submit examples/payload.json`)"
    rows = [("JOB", "STATE", "RANKS", "SUBMITTED", "RESULT PATH")]
    rows += [(job["job_id"], job["state"], str(job["world_size"]), _when(job["submitted_at"]), job["result_path"])
             for job in jobs]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
