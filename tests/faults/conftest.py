"""The fault matrix's servers: moto's S3 (the session's), the local runtime with 2 sandboxes running
the real worker through :mod:`tests.faults.fault_handler` (which counts every invocation and can
stretch a phase), and the rendezvous server; coordinators as child processes, killed at will.

Small on purpose (4 tiny partitions, 2 sandboxes, short deadlines), so the whole folder runs in
a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.common import Servers, seed_bucket
from tests.processes import api, rendezvous_process, runtime_process, start_coordinator

FIXTURES = (api, start_coordinator)  # offered to the tests below, as if defined here

PARTITIONS = 4
SANDBOXES = 2
#: The worker's timeout: an attempt's deadline, which bounds how long a restarted coordinator waits.
WORKER_TIMEOUT_S = 45


@dataclass
class FaultStack(Servers):
    """:class:`Servers`, plus what the fault handler writes and reads."""

    invocations_file: Path = Path()
    directives_dir: Path = Path()

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{"COSMIC_WORKER_TIMEOUT": str(WORKER_TIMEOUT_S), **extra})

    def direct(self, result_path: str, **directives: Any) -> None:
        """Stretch phases of the ranks that write under ``result_path`` (see the fault handler)."""
        from tests.faults.fault_handler import directives_path  # imports the worker, so torch

        directives_path(self.directives_dir, result_path).write_text(json.dumps(directives))

    def lines(self, job_id: str) -> list[dict[str, Any]]:
        text = self.invocations_file.read_text() if self.invocations_file.exists() else ""
        return [line for line in map(json.loads, text.splitlines()) if line.get("job_id") == job_id]

    def invocations(self, job_id: str) -> list[tuple[int, int]]:
        """``(rank, attempt)`` of every invocation of the job that reached a sandbox, in order."""
        return [(line["rank"], line["attempt"]) for line in self.lines(job_id) if "phase" not in line]

    def pid_of(self, job_id: str, rank: int) -> int:
        """The sandbox process running the rank's latest invocation."""
        return [line["pid"] for line in self.lines(job_id) if "phase" not in line and line["rank"] == rank][-1]

    def wait_phase(self, job_id: str, phase: str, rank: int | None = None, timeout: float = 60) -> None:
        """Until a rank of the job (``rank``, if given) entered ``phase`` (or was invoked: ``invoked``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines(job_id):
                if line.get("phase", "invoked") == phase and rank in (None, line["rank"]):
                    return
            time.sleep(0.02)
        raise AssertionError(f"no rank of job {job_id} entered {phase} within {timeout} s: {self.lines(job_id)}")

    def s3_pid(self) -> int:
        """The pid of the moto server behind :attr:`s3` (the session's), found by its command line."""
        port = self.s3.rsplit(":", 1)[1]
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"moto" in arg for arg in args) and port.encode() in args:
                return int(cmdline.parent.name)
        raise AssertionError(f"no moto process serves {self.s3}")

    @contextmanager
    def s3_frozen(self) -> Iterator[None]:
        """S3 stopped in its tracks (SIGSTOP: connections hang, nothing answers), then resumed."""
        pid = self.s3_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def result_objects(self, result_path: str) -> set[str]:
        """Every key under the job's result path, relative to it, but the per-attempt bookkeeping
        (commit claims, outcomes, progress records: :func:`tests.faults.checks.finished` checks the claims)."""
        keys = {key[len(result_path) + 1:] for key in self.keys(result_path + "/")}
        return {key for key in keys if not key.startswith("_progress/")
                and not re.match(r"_control/[^/]+/(commit|outcome)-", key)}


@pytest.fixture(scope="session")
def stack(e2e: None, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    torch = pytest.importorskip("torch")  # the workers in the runtime's sandboxes; never the coordinator
    pytest.importorskip("awslambdaric")
    from services.s3store import S3Store
    from services.worker.model import RedshiftModel

    folder = tmp_path_factory.mktemp("fault-stack")
    invocations, directives = folder / "invocations.jsonl", folder / "directives"
    directives.mkdir()
    store = S3Store()
    torch.manual_seed(5)
    bucket, _, _ = seed_bucket(store, "cosmic-faults-", PARTITIONS, RedshiftModel())
    options = ["--sandboxes", str(SANDBOXES), "--timeout", str(WORKER_TIMEOUT_S), "--handler",
               "tests.faults.fault_handler.handler"]
    env = {"COSMIC_WORKER_SCRATCH_DIR": str(folder / "scratch"), "COSMIC_TEST_INVOCATIONS": str(invocations),
           "COSMIC_TEST_DIRECTIVES": str(directives)}
    with runtime_process(folder / "runtime.log", *options, env=env) as lambda_endpoint, \
            rendezvous_process(folder / "rendezvous.log") as rendezvous:
        yield FaultStack(s3_endpoint, lambda_endpoint, rendezvous, bucket, store, invocations, directives)
