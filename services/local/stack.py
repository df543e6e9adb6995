"""The embedded stack: S3, Lambda and the rendezvous server as local processes, for one machine.

No Docker and no AWS: moto's S3 server, the local Lambda runtime (``python -m services.local.runtime``)
and the rendezvous server run as three child processes on free loopback ports, and
:meth:`Stack.export` points boto3 and the coordinator at them through the standard variables.

Each child runs in its own session (``start_new_session``), so the stack outlives the process
that started it: a coordinator that crashes, even by ``kill -9``, finds its stack (and the jobs'
state in S3) again on restart. Endpoints and pids are recorded in ``<cache>/embedded/stack.json``;
:func:`ensure_stack` reattaches when every recorded process is alive and answers, otherwise it
stops what is left and starts afresh. Logs go to ``<cache>/embedded/*.log``.

Sandboxes: the runtime runs at most ``sandboxes`` invocations at once, and a job with the
communicator needs all its ranks at once, so a job's world size must not exceed it (default 4).

The children are started and stopped by :mod:`services.local.processes`; the demo data is put in
the stack's S3 by :mod:`services.local.seeding`. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from services import envconfig
from services.cache import cache_dir
from services.local.errors import EmbeddedError
from services.local.processes import (
    ROOT,
    Child,
    ChildError,
    alive,
    healthz,
    is_ours,
    listening,
    python,
    start,
    stop_pids,
)
from services.local.runtime.config import RuntimeSettings
from services.local.s3server import s3_answers
from services.logs import event
from services.ports import free_ports

log = logging.getLogger("cosmic.coordinator.embedded")

DEFAULT_SANDBOXES = 4
STATE_BUCKET = "cosmicai-data"
WORKER_FUNCTION = "cosmic-worker"
LOCAL_CREDENTIAL = "cosmic-local"
REGION = "us-east-1"
#: Seconds each service may take to answer after it is started (the runtime imports torch in every sandbox).
READY_TIMEOUT = {"s3": 30.0, "runtime": 120.0, "rendezvous": 20.0}
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Service:
    """One child process of the stack. ``marker`` is in its command line: a recycled pid is not ours."""

    name: str
    pid: int
    port: int
    log: str
    marker: str
    health_port: int | None = None

    def alive(self) -> bool:
        """The process is running (not a zombie) and is still the one we started."""
        return alive(self.pid) and is_ours(self.pid, self.marker, self.port)

    def answers(self) -> bool:
        if self.health_port is not None:
            return healthz(self.health_port)
        return listening(self.port)


@dataclass(frozen=True)
class Stack:
    """The three services and how to reach them."""

    s3: Service
    runtime: Service
    rendezvous: Service
    sandboxes: int
    started_at: float
    reattached: bool = field(default=False, compare=False)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3.port}"

    @property
    def lambda_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.runtime.port}"

    @property
    def rendezvous_endpoint(self) -> str:
        return f"127.0.0.1:{self.rendezvous.port}"

    @property
    def services(self) -> tuple[Service, Service, Service]:
        return self.s3, self.runtime, self.rendezvous

    @property
    def pids(self) -> tuple[int, int, int]:
        return self.s3.pid, self.runtime.pid, self.rendezvous.pid

    def export(self, environ: dict[str, str] | None = None) -> None:
        """Point boto3 and the coordinator at this stack (credentials and region only where unset)."""
        env = os.environ if environ is None else environ
        env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint
        env["AWS_ENDPOINT_URL_LAMBDA"] = self.lambda_endpoint
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setdefault(name, LOCAL_CREDENTIAL)
        for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
            env.setdefault(name, REGION)
        env["COSMIC_COORDINATOR_RENDEZVOUS_ENDPOINT"] = self.rendezvous_endpoint
        env["COSMIC_COORDINATOR_STATE_BUCKET"] = STATE_BUCKET
        env["COSMIC_WORKER_FUNCTION"] = WORKER_FUNCTION

    def alive(self) -> bool:
        return all(service.alive() and service.answers() for service in self.services)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every service (SIGTERM, then SIGKILL after ``timeout``) and forget the stack."""
        with _locked():
            _stop_services(self.services, timeout)
            recorded = _read_record()
            if recorded is None or recorded.pids == self.pids:
                _record_path().unlink(missing_ok=True)
        event(log, "embedded_stopped", pids=list(self.pids))

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "sandboxes": self.sandboxes, "started_at": self.started_at,
                **{service.name: asdict(service) for service in self.services}}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Stack:
        return cls(s3=Service(**document["s3"]), runtime=Service(**document["runtime"]),
                   rendezvous=Service(**document["rendezvous"]), sandboxes=int(document["sandboxes"]),
                   started_at=float(document["started_at"]))


def stack_dir() -> Path:
    return cache_dir() / "embedded"


def _record_path() -> Path:
    return stack_dir() / "stack.json"


def ensure_stack(sandboxes: int | None = None, fresh: bool = False) -> Stack:
    """The running stack, reattached when its recorded processes are alive, else started anew.

    ``sandboxes`` (argument, else the runtime's ``COSMIC_RUNTIME_SANDBOXES``, else 4) is the runtime's
    concurrency; a live stack with a different explicit count is replaced. ``fresh`` always replaces it.
    """
    wanted = sandboxes or envconfig.lookup(RuntimeSettings, "sandboxes") or None
    if wanted is not None and wanted < 1:
        raise EmbeddedError(f"sandboxes must be at least 1, got {wanted}")
    with _locked():
        recorded = _read_record()
        if recorded is not None and not fresh and recorded.alive() and wanted in (None, recorded.sandboxes):
            event(log, "embedded_reattached", s3=recorded.s3_endpoint, runtime=recorded.lambda_endpoint,
                  rendezvous=recorded.rendezvous_endpoint, pids=list(recorded.pids))
            return Stack(**{**recorded.__dict__, "reattached": True})
        if recorded is not None:
            _stop_services(recorded.services, STOP_TIMEOUT)  # leftovers of a dead or unwanted stack
            _record_path().unlink(missing_ok=True)
        stack = _start(wanted or DEFAULT_SANDBOXES)
        _write_record(stack)
        return stack


def running_stack() -> Stack | None:
    """The recorded stack when it is alive, else None; starts nothing (for commands run beside it)."""
    recorded = _read_record()
    return recorded if recorded is not None and recorded.alive() else None


# -- starting --------------------------------------------------------------------------------------
def _start(sandboxes: int) -> Stack:
    folder = stack_dir()
    folder.mkdir(parents=True, exist_ok=True)
    started: list[Service] = []
    try:
        # all at once: ports asked for one by one, before any child binds, can repeat
        s3_port, runtime_port, pair_port, health_port = free_ports(4)
        s3 = _spawn(started, "s3", python("moto.server", "-H", "127.0.0.1", "-p", str(s3_port)),
                    s3_port, "moto.server", _child_env(None, MOTO_PORT=str(s3_port)))
        runtime = _spawn(started, "runtime", python("services.local.runtime", "--host", "127.0.0.1",
                                                    "--port", str(runtime_port), "--sandboxes", str(sandboxes),
                                                    "--function", WORKER_FUNCTION),
                         runtime_port, "services.local.runtime", _child_env(f"http://127.0.0.1:{s3_port}"))
        rendezvous = _spawn(started, "rendezvous", python("services.rendezvous", "--host", "127.0.0.1",
                                                          "--port", str(pair_port), "--health-host", "127.0.0.1",
                                                          "--health-port", str(health_port)),
                            pair_port, "services.rendezvous", _child_env(None), health_port=health_port)
        s3.wait_ready(lambda: s3_answers(s3_port), READY_TIMEOUT["s3"], poll=0.1)
        rendezvous.wait_ready(lambda: healthz(health_port), READY_TIMEOUT["rendezvous"], poll=0.1)
        runtime.wait_ready(lambda: _dry_run(runtime_port), READY_TIMEOUT["runtime"], poll=0.1)
    except ChildError as exc:
        _stop_services(started, STOP_TIMEOUT)
        raise EmbeddedError(str(exc), service=exc.name) from None
    except BaseException:
        _stop_services(started, STOP_TIMEOUT)
        raise
    stack = Stack(started[0], started[1], started[2], sandboxes, time.time())
    event(log, "embedded_started", s3=stack.s3_endpoint, runtime=stack.lambda_endpoint,
          rendezvous=stack.rendezvous_endpoint, sandboxes=sandboxes, pids=list(stack.pids), logs=str(folder))
    return stack


def _child_env(s3_endpoint: str | None, **extra: str) -> dict[str, str]:
    """Our environment without any AWS setting (no real account may leak in), plus the local ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=LOCAL_CREDENTIAL, AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIAL,
               AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION, PYTHONUNBUFFERED="1", **extra)
    if s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    return env


def _spawn(started: list[Service], name: str, command: list[str], port: int, marker: str, env: dict[str, str],
           health_port: int | None = None) -> Child:
    """Start one service in its own session (it outlives us), appended to ``started`` at once."""
    log_path = stack_dir() / f"{name}.log"
    child = start(command, name=f"the {name} service (port {port})", log=log_path, append=True, env=env, cwd=ROOT,
                  new_session=True)
    started.append(Service(name, child.pid, port, str(log_path), marker, health_port))
    return child


def _dry_run(port: int) -> bool:
    """Lambda's own readiness check: a DryRun invoke through boto3 (the runtime listens once warm)."""
    if not listening(port):
        return False
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("lambda", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION,
                          aws_access_key_id=LOCAL_CREDENTIAL, aws_secret_access_key=LOCAL_CREDENTIAL,
                          config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
    try:
        client.invoke(FunctionName=WORKER_FUNCTION, InvocationType="DryRun")
    except (BotoCoreError, ClientError):
        return False
    finally:
        client.close()
    return True


# -- stopping --------------------------------------------------------------------------------------
def _stop_services(services: Iterable[Service], timeout: float) -> None:
    """SIGTERM each service's process group (its sandboxes too), SIGKILL what outlives ``timeout``."""
    mine = {service.pid: service for service in services if service.alive()}
    for pid in stop_pids(mine, timeout, group=True):
        event(log, "embedded_kill", logging.WARNING, service=mine[pid].name, pid=pid)


# -- the record ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time decides whether to reattach or start (two coordinators, a test and a demo)."""
    stack_dir().mkdir(parents=True, exist_ok=True)
    with open(stack_dir() / "stack.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_record() -> Stack | None:
    try:
        return Stack.from_json(json.loads(_record_path().read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        event(log, "embedded_record_unreadable", logging.WARNING, path=str(_record_path()), error=repr(exc))
        return None


def _write_record(stack: Stack) -> None:
    partial = _record_path().with_suffix(".partial")
    partial.write_text(json.dumps(stack.to_json(), indent=2) + "\n")
    partial.replace(_record_path())
