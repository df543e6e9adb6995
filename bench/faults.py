"""What each fault costs: the same job with and without it, in one run, rounds interleaved.

The job: 4 ranks over four 25MB demo partitions, communicator on, on the embedded stack with 4
sandboxes (all warm: a warm-up job first). Each round runs, in an order that rotates per round:

- ``baseline``: the job, nothing broken;
- ``sandbox_kill``: one busy worker sandbox (an ``awslambdaric`` child of the runtime) SIGKILLed
  ``--at`` of the warm-up job's time in (then one unmeasured job warms the replaced sandbox again);
- ``coordinator_kill``: the coordinator (a child process) SIGKILLed at the same point and started
  again at once; the time counts until the new one says the job ended;
- ``s3_pause``: the stack's S3 server stopped with SIGSTOP for ``--s3-pause`` seconds, then SIGCONT
  (its state kept: an outage, not a data loss);
- ``throttled``: two direct worker invocations (someone else's, twice a rank's work) take 2 of the 4
  sandboxes as the job is submitted: 2 ranks are throttled and wait. Beside the extra time, the
  lag between the sandboxes freeing and the throttled ranks starting (the backoff's cost);
- ``cancel``: ``DELETE`` at the same point; the figure is the time from it to ``cancelled``.

Extra time = the faulted job's time minus the baseline of the same round. The machine is shared
(load average printed): compare within one run only.

Run: ``flock /tmp/cosmic-bench.lock .venv/bin/python bench/faults.py [--rounds 3]`` (with
``COSMIC_CACHE_DIR`` pointing at a cache that has the demo assets, or they are made first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _harness import OUT, children_killed_on_exit, spawn, write_report

from services.contracts import WorkerEvent
from services.local.processes import Child, python
from services.local.seeding import seed
from services.local.stack import STATE_BUCKET, Stack, ensure_stack
from services.ports import free_port

SANDBOXES = 4
SCENARIOS = ("baseline", "sandbox_kill", "coordinator_kill", "s3_pause", "throttled", "cancel")
TERMINAL = {"succeeded", "failed", "cancelled"}


class Coordinator:
    """The coordinator as a child process (so that it can be killed) and a small JSON client."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child = spawn(python("services.coordinator", "--port", str(self.port)), log)
        self.child.wait_ready(lambda: self._ok("/healthz"), 30)

    def _ok(self, path: str) -> bool:
        try:
            return self.call("GET", path)[0] == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wait(self, job_id: str, limit_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            status, body = self.call("GET", f"/jobs/{job_id}")
            if status == 200 and body["state"] in TERMINAL:
                return dict(body)
            time.sleep(0.05)
        raise RuntimeError(f"job {job_id} did not end within {limit_s:g} s")


def payload(label: str) -> dict[str, Any]:
    return {"bucket": STATE_BUCKET, "file_limit": str(SANDBOXES), "world_size": SANDBOXES, "communicator": True,
            "S3_object_name": "Anomaly Detection", "data_bucket": STATE_BUCKET, "data_prefix": "25MB",
            "result_path": f"bench/faults/{label}"}


def sandbox_pids(runtime_pid: int) -> list[int]:
    """The runtime's sandbox processes (its ``awslambdaric`` children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == runtime_pid and b"awslambdaric" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


class Bench:
    def __init__(self, stack: Stack, at_fraction: float, s3_pause_s: float) -> None:
        self.stack, self.at_fraction, self.s3_pause_s = stack, at_fraction, s3_pause_s
        self.s3_pid, self.runtime_pid, _ = stack.pids
        self.logs = 0
        self.api = self._coordinator()
        self.at_s = 1.0
        self.jobs = 0

    def _coordinator(self) -> Coordinator:
        self.logs += 1
        return Coordinator(OUT / f"faults-coordinator-{self.logs}.log")

    def _submit(self) -> tuple[str, float]:
        self.jobs += 1
        status, body = self.api.call("POST", "/jobs", payload(f"{self.jobs}-{os.getpid()}"))
        if status != 202:
            raise RuntimeError(f"submit: {status} {body}")
        return str(body["job_id"]), time.monotonic()

    def _end(self, job_id: str, started: float) -> dict[str, Any]:
        final = self.api.wait(job_id)
        attempts = sum(len(rank["attempts"]) for rank in final["ranks"])
        return {"seconds": time.monotonic() - started, "state": final["state"], "attempts": attempts}

    def warm_up(self) -> None:
        """Two jobs: the first loads the model in every sandbox, the second (warm) times the faults."""
        cold = self.baseline()
        warm = self.baseline()
        self.at_s = max(1.0, self.at_fraction * warm["seconds"])
        print(f"warm-up jobs: {cold['seconds']:.1f} s cold, {warm['seconds']:.1f} s warm ({warm['state']}); "
              f"faults land {self.at_s:.1f} s in", file=sys.stderr)

    def baseline(self) -> dict[str, Any]:
        return self._end(*self._submit())

    def sandbox_kill(self) -> dict[str, Any]:
        job_id, started = self._submit()
        time.sleep(self.at_s)
        os.kill(sorted(sandbox_pids(self.runtime_pid))[0], signal.SIGKILL)
        result = self._end(job_id, started)
        self.baseline()  # unmeasured: the replaced sandbox loads the model again here, not in the next case
        return result

    def coordinator_kill(self) -> dict[str, Any]:
        job_id, started = self._submit()
        time.sleep(self.at_s)
        self.api.child.kill()
        self.api = self._coordinator()
        return self._end(job_id, started)

    def s3_pause(self) -> dict[str, Any]:
        job_id, started = self._submit()
        time.sleep(self.at_s)
        os.kill(self.s3_pid, signal.SIGSTOP)
        try:
            time.sleep(self.s3_pause_s)
        finally:
            os.kill(self.s3_pid, signal.SIGCONT)
        return self._end(job_id, started)

    def throttled(self) -> dict[str, Any]:
        freed: list[float] = []
        others = [threading.Thread(target=self._someone_else, args=(rank, freed)) for rank in (0, 1)]
        for thread in others:
            thread.start()
        time.sleep(0.3)  # their invocations hold their sandboxes
        job_id, started = self._submit()
        result = self._end(job_id, started)
        for thread in others:
            thread.join(120)
        final = self.api.call("GET", f"/jobs/{job_id}")[1]
        waited = [a for rank in final["ranks"] for a in rank["attempts"] if a["throttled_s"]]
        free_at = time.time() - (time.monotonic() - max(freed)) if freed else None
        lags = [a["started_at"] - free_at for a in waited] if free_at else []
        return {**result, "throttled_ranks": len(waited), "start_lag_s": max(lags) if lags else None}

    def _someone_else(self, rank: int, freed: list[float]) -> None:
        """A direct invocation of the worker, not through the coordinator: two ranks' worth of work."""
        import boto3

        event = WorkerEvent(job_id=f"other-{self.jobs}", rank=rank, world_size=2, data_bucket=STATE_BUCKET,
                            partitions=("25MB/5.pt", "25MB/6.pt"), result_bucket=STATE_BUCKET,
                            result_path=f"bench/faults/other-{self.jobs}", model_bucket=STATE_BUCKET,
                            model_prefix="Anomaly Detection")
        client = boto3.client("lambda", endpoint_url=self.stack.lambda_endpoint)
        client.invoke(FunctionName="cosmic-worker", Payload=json.dumps(event.to_dict()))["Payload"].read()
        freed.append(time.monotonic())

    def cancel(self) -> dict[str, Any]:
        job_id, _ = self._submit()
        time.sleep(self.at_s)
        asked = time.monotonic()
        status, answer = self.api.call("DELETE", f"/jobs/{job_id}")
        if status != 202:
            raise RuntimeError(f"cancel: {status} {answer}")
        return self._end(job_id, asked)


def spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--at", type=float, default=0.4, help="where in the job a fault lands (share of its time)")
    parser.add_argument("--s3-pause", type=float, default=5.0, help="seconds S3 is stopped")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    print(f"starting the embedded stack with {SANDBOXES} sandboxes and seeding ...", file=sys.stderr)
    stack = ensure_stack(sandboxes=SANDBOXES, fresh=True)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    try:
        seed(stack, ("25MB",), count=6)
        stack.export()
        with children_killed_on_exit():
            bench = Bench(stack, args.at, args.s3_pause)
            bench.warm_up()
            for round_number in range(args.rounds):
                shift = round_number % len(SCENARIOS)
                for name in SCENARIOS[shift:] + SCENARIOS[:shift]:
                    result = getattr(bench, name)()
                    rows[name].append({**result, "round": round_number})
                    print(f"round {round_number} {name:17s} {result['seconds']:6.1f} s  {result['state']:9s} "
                          f"attempts {result['attempts']}", file=sys.stderr)
    finally:
        stack.stop()
    load = os.getloadavg()
    base = {row["round"]: row["seconds"] for row in rows["baseline"]}
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; seconds min / median / max")
    print("| fault | job time (s) | extra over the same round's baseline (s) | states | attempts |")
    print("|---|---|---|---|---|")
    for name in SCENARIOS:
        times = [row["seconds"] for row in rows[name]]
        compared = name not in ("baseline", "cancel")
        extra = [row["seconds"] - base[row["round"]] for row in rows[name]] if compared else []
        states = ", ".join(sorted({row["state"] for row in rows[name]}))
        attempts = ", ".join(str(row["attempts"]) for row in rows[name])
        label = "cancel (DELETE to cancelled)" if name == "cancel" else name
        print(f"| {label} | {spread(times)} | {spread(extra)} | {states} | {attempts} |")
    lags = [row["start_lag_s"] for row in rows["throttled"] if row.get("start_lag_s") is not None]
    print(f"throttled ranks started {spread(lags)} s after the sandboxes they waited for were free")
    write_report("faults", {"rounds": args.rounds, "at_fraction": args.at, "s3_pause_s": args.s3_pause,
                            "load_average": load, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
