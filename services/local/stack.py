"""The embedded stack: S3, Lambda and the rendezvous server as local processes, for one machine.

No Docker and no AWS: moto's S3 server, the local Lambda runtime (``python -m services.local.runtime``)
and the rendezvous server run as three child processes on free loopback ports, and
:meth:`Stack.export` points boto3 and the coordinator at them through the standard variables.

Each child runs in its own session (``start_new_session``), so the stack outlives the process
that started it: a coordinator that crashes, even by ``kill -9``, finds its stack (and the jobs'
state in S3) again on restart. Endpoints, pids and the commands using the stack (``users``) are
recorded in ``<cache>/embedded/stack.json``; :func:`ensure_stack` reattaches when every recorded
process is alive and answers, and never stops a running stack: a second command on the same cache
folder shares it. Only a broken stack (a service dead) is replaced, after its S3 is saved if it
still answers. Logs go to ``<cache>/embedded/*.log``.

Sandboxes: the runtime runs at most ``sandboxes`` invocations at once, and a job with the
communicator needs all its ranks at once, so a job's world size must not exceed it (default 4).
Asking a running stack for another count restarts the runtime alone, on the same port (S3 and the
rendezvous keep their processes, ports and data), and only when no other live command uses the
stack: a coordinator's invocations in flight would be cut off, so then it refuses, saying who uses it.
The same holds for the sandboxes' configured memory (``memory_mb``), which sets their CPU share
(1,769 MB: one vCPU, :mod:`services.local.runtime.cpushare`).

S3 survives a stop: :meth:`Stack.stop` saves what moto's in-memory server holds to
``<cache>/embedded/s3-snapshot/`` and the next start puts it back (:mod:`services.local.snapshot`).

The children are started and stopped by :mod:`services.local.launch`; the demo data is put in
the stack's S3 by :mod:`services.local.seeding`. This module never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from services import envconfig
from services.cache import cache_dir
from services.function import MAX_MEMORY_MB, MIN_MEMORY_MB
from services.local import snapshot
from services.local.errors import EmbeddedError
from services.local.filelock import locked
from services.local.launch import (
    LOCAL_CREDENTIAL,
    READY_TIMEOUT,
    REGION,
    STOP_TIMEOUT,
    WORKER_FUNCTION,
    Service,
    start_runtime,
    start_services,
    stop_services,
)
from services.local.processes import alive, started_ticks
from services.local.runtime.config import RuntimeSettings
from services.local.s3server import s3_answers
from services.logs import event

log = logging.getLogger("cosmic.coordinator.embedded")

DEFAULT_SANDBOXES = 4
STATE_BUCKET = "cosmicai-data"
__all__ = ["DEFAULT_SANDBOXES", "LOCAL_CREDENTIAL", "READY_TIMEOUT", "REGION", "STATE_BUCKET", "STOP_TIMEOUT",
           "WORKER_FUNCTION", "EmbeddedError", "Service", "Stack", "Stopped", "User", "ensure_stack",
           "recorded_stack", "release", "running_stack", "snapshot_dir", "stack_dir"]


@dataclass(frozen=True)
class User:
    """A command attached to the stack (``cosmic serve``, ``cosmic demo``); ``started`` tells a recycled pid."""

    pid: int
    started: str
    command: str

    def alive(self) -> bool:
        return alive(self.pid) and started_ticks(self.pid) == self.started

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


@dataclass(frozen=True)
class Stack:
    """The three services and how to reach them."""

    s3: Service
    runtime: Service
    rendezvous: Service
    sandboxes: int
    started_at: float
    #: The sandboxes' configured memory, MB: Lambda's CPU share follows it.
    memory_mb: int = field(default_factory=lambda: RuntimeSettings().memory_mb)
    users: tuple[User, ...] = field(default=(), compare=False)
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

    def same_stack(self, other: Stack) -> bool:
        """The same stack, perhaps resized since (the runtime's pid changes then, S3's never)."""
        return (self.started_at, self.s3.pid) == (other.started_at, other.s3.pid)

    def other_users(self) -> list[User]:
        """The live commands attached to the stack, this process left out."""
        return [user for user in self.users if user.pid != os.getpid() and user.alive()]

    def describe(self) -> str:
        return (f"S3 pid {self.s3.pid} on port {self.s3.port}, runtime pid {self.runtime.pid} on port "
                f"{self.runtime.port} with {self.sandboxes} sandboxes of {self.memory_mb} MB, rendezvous pid "
                f"{self.rendezvous.pid} on port {self.rendezvous.port}")

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

    def s3_client(self) -> Any:
        """A client of this stack's own S3, whatever this process's AWS variables say."""
        from services.s3store import s3_client

        return s3_client(self.s3_endpoint, REGION, LOCAL_CREDENTIAL, LOCAL_CREDENTIAL, connect_timeout=5,
                         read_timeout=60, attempts=3)

    def snapshot(self) -> snapshot.Outcome:
        """Save what S3 holds to the cache folder now (incremental: only changed objects are fetched)."""
        client = self.s3_client()
        try:
            return snapshot.take(client, snapshot_dir())
        finally:
            client.close()

    def stop(self, timeout: float = STOP_TIMEOUT, require_saved: bool = False) -> Stopped:
        """Save S3, stop every service (SIGTERM, then SIGKILL after ``timeout``) and forget the stack.

        ``require_saved``: when S3 runs but cannot be saved, EmbeddedError and nothing is stopped.
        """
        with _locked():
            return _stop(self, timeout, require_saved)

    def to_json(self) -> dict[str, Any]:
        return {"version": 1, "sandboxes": self.sandboxes, "memory_mb": self.memory_mb, "started_at": self.started_at,
                "users": [asdict(user) for user in self.users],
                **{service.name: asdict(service) for service in self.services}}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Stack:
        return cls(s3=Service(**document["s3"]), runtime=Service(**document["runtime"]),
                   rendezvous=Service(**document["rendezvous"]), sandboxes=int(document["sandboxes"]),
                   started_at=float(document["started_at"]),
                   memory_mb=int(document.get("memory_mb") or RuntimeSettings().memory_mb),
                   users=tuple(User(**user) for user in document.get("users", [])))


@dataclass(frozen=True)
class Stopped:
    """What :meth:`Stack.stop` did: the services it stopped and S3's snapshot (or why there is none)."""

    stack: Stack
    saved: snapshot.Outcome | None
    error: str | None = None


def stack_dir() -> Path:
    return cache_dir() / "embedded"


def snapshot_dir() -> Path:
    return stack_dir() / "s3-snapshot"


def _record_path() -> Path:
    return stack_dir() / "stack.json"


def ensure_stack(sandboxes: int | None = None, *, at_least: int | None = None, fresh: bool = False,
                 user: str | None = None, memory_mb: int | None = None) -> Stack:
    """The running stack, reattached when its recorded processes are alive, else started anew (S3
    restored from the last snapshot). A running stack is never stopped here.

    ``sandboxes`` (argument, else the runtime's ``COSMIC_RUNTIME_SANDBOXES``) is the runtime's
    concurrency: a running stack with another count has its runtime alone restarted with it, unless
    another live command uses the stack (EmbeddedError, saying who). ``at_least``: a running stack
    with fewer sandboxes is resized to it, one with more is used as it is; a new one gets
    ``max(4, at_least)``. ``fresh``: the caller needs a stack of its own: EmbeddedError when one runs.
    ``user`` (``"cosmic serve"``) records this process as using the stack until it exits, so that
    no other command resizes it or, through :func:`release`, stops it under it. ``memory_mb`` (else
    ``COSMIC_RUNTIME_MEMORY_MB``; a new stack: the runtime's default) is the sandboxes' configured
    memory, restarting the runtime as another count does.
    """
    wanted = sandboxes or envconfig.lookup(RuntimeSettings, "sandboxes") or None
    memory = memory_mb or envconfig.lookup(RuntimeSettings, "memory_mb") or None
    for name, value in (("sandboxes", wanted), ("at_least", at_least)):
        if value is not None and value < 1:
            raise EmbeddedError(f"{name} must be at least 1, got {value}")
    if memory is not None and not MIN_MEMORY_MB <= memory <= MAX_MEMORY_MB:
        raise EmbeddedError(f"memory_mb must be within {MIN_MEMORY_MB}..{MAX_MEMORY_MB} (Lambda's sizes), got {memory}")
    with _locked():
        recorded = _read_record()
        if recorded is not None and recorded.alive():
            if fresh:
                raise EmbeddedError(f"an embedded stack already runs in {stack_dir()} ({recorded.describe()}); it is "
                                    "left running: use it, or stop it first with `cosmic stop`")
            target = wanted or (at_least if at_least is not None and recorded.sandboxes < at_least else None)
            stack = recorded
            if (target is not None and target != recorded.sandboxes) or (memory and memory != recorded.memory_mb):
                stack = _resize(recorded, target or recorded.sandboxes, memory or recorded.memory_mb)
            stack = _attach(stack, user)
            event(log, "embedded_reattached", s3=stack.s3_endpoint, runtime=stack.lambda_endpoint,
                  rendezvous=stack.rendezvous_endpoint, sandboxes=stack.sandboxes, pids=list(stack.pids))
            return replace(stack, reattached=True)
        if recorded is not None:  # a service is dead: keep what its S3 holds if it still answers, then replace it
            _stop(recorded, STOP_TIMEOUT)
        stack = _start(wanted or max(DEFAULT_SANDBOXES, at_least or 0), memory or RuntimeSettings().memory_mb)
        try:
            _restore(stack)
        except BaseException:
            stop_services(stack.services, STOP_TIMEOUT)
            raise
        return _attach(stack, user)


def release(stack: Stack) -> bool:
    """This process is done with ``stack``: stop it when this process started it and no other live
    command uses it (True), else leave it running and drop this process from its users (False)."""
    with _locked():
        recorded = _read_record()
        if recorded is None or not recorded.same_stack(stack):
            return False  # already stopped, or replaced by someone else
        if stack.reattached or recorded.other_users():
            _write_record(replace(recorded, users=tuple(u for u in recorded.users if u.pid != os.getpid())))
            event(log, "embedded_left_running", pids=list(recorded.pids),
                  users=[user.describe() for user in recorded.other_users()])
            return False
        _stop(recorded, STOP_TIMEOUT)
        return True


def running_stack() -> Stack | None:
    """The recorded stack when it is alive, else None; starts nothing (for commands run beside it)."""
    recorded = _read_record()
    return recorded if recorded is not None and recorded.alive() else None


def recorded_stack() -> Stack | None:
    """The recorded stack, alive or not (``cosmic stop`` stops what is left of a broken one)."""
    return _read_record()


def _attach(stack: Stack, user: str | None) -> Stack:
    """Record ``stack`` with this process among its users (when ``user``) and the dead ones dropped."""
    users = [u for u in stack.users if u.alive() and u.pid != os.getpid()]
    if user is not None:
        users.append(User(os.getpid(), started_ticks(os.getpid()), user))
    stack = replace(stack, users=tuple(users))
    _write_record(stack)
    return stack


# -- resizing --------------------------------------------------------------------------------------
def _resize(stack: Stack, sandboxes: int, memory_mb: int) -> Stack:
    """Restart the runtime alone with ``sandboxes`` of ``memory_mb``, on its port if it can be had again."""
    others = stack.other_users()
    if others:
        raise EmbeddedError(
            f"the embedded stack in {stack_dir()} has {stack.sandboxes} sandboxes of {stack.memory_mb} MB and "
            f"{sandboxes} of {memory_mb} MB were asked for, but {', '.join(user.describe() for user in others)} "
            "uses it: restarting its runtime would cut off their invocations. The stack is left as it is; stop "
            f"them first, or ask for {stack.sandboxes} sandboxes of {stack.memory_mb} MB",
            service="runtime")
    stop_services([stack.runtime], STOP_TIMEOUT)
    # the same port, so that a coordinator's Lambda endpoint stays right; else any free one
    runtime = start_runtime(stack_dir(), stack.s3.port, sandboxes, memory_mb, (stack.runtime.port, 0))
    resized = replace(stack, runtime=runtime, sandboxes=sandboxes, memory_mb=memory_mb)
    _write_record(resized)
    event(log, "embedded_resized", sandboxes_before=stack.sandboxes, sandboxes=sandboxes,
          memory_mb_before=stack.memory_mb, memory_mb=memory_mb,
          runtime=resized.lambda_endpoint, pids=list(resized.pids))
    return resized


# -- starting --------------------------------------------------------------------------------------
def _start(sandboxes: int, memory_mb: int) -> Stack:
    folder = stack_dir()
    folder.mkdir(parents=True, exist_ok=True)
    s3, runtime, rendezvous = start_services(folder, sandboxes, memory_mb)
    stack = Stack(s3, runtime, rendezvous, sandboxes, time.time(), memory_mb)
    event(log, "embedded_started", s3=stack.s3_endpoint, runtime=stack.lambda_endpoint,
          rendezvous=stack.rendezvous_endpoint, sandboxes=sandboxes, memory_mb=memory_mb, pids=list(stack.pids),
          logs=str(folder))
    return stack


# -- stopping, saving and restoring S3 -------------------------------------------------------------
def _stop(stack: Stack, timeout: float, require_saved: bool = False) -> Stopped:
    """Save S3 and stop the stack as recorded (it may have been resized since ``stack`` was read);
    the caller holds the lock."""
    recorded = _read_record()
    current = recorded if recorded is not None and recorded.same_stack(stack) else stack
    saved, error = _save(current)
    if saved is None and require_saved and current.s3.alive():
        raise EmbeddedError(f"{error}; the stack is left running (`cosmic stop --force` stops it unsaved)",
                            service="s3")
    stop_services(current.services, timeout)
    if recorded is None or recorded.same_stack(stack):
        _record_path().unlink(missing_ok=True)
    event(log, "embedded_stopped", pids=list(current.pids), saved=saved.describe() if saved else error)
    return Stopped(current, saved, error)


def _save(stack: Stack) -> tuple[snapshot.Outcome | None, str | None]:
    """Snapshot S3 when its server still answers; else (or when saving fails) why not, logged."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not (stack.s3.alive() and s3_answers(stack.s3.port)):
        error = f"S3 (pid {stack.s3.pid}) was not running: what it held since the last snapshot is lost"
    else:
        try:
            return stack.snapshot(), None
        except (BotoCoreError, ClientError, OSError) as exc:
            error = f"saving S3 to {snapshot_dir()} failed: {exc}"
    event(log, "embedded_snapshot_failed", logging.ERROR, error=error)
    return None, error


def _restore(stack: Stack) -> None:
    """Put the last snapshot's objects into the new stack's S3 (an unreadable one is set aside)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = stack.s3_client()
    try:
        snapshot.restore(client, snapshot_dir())
    except (BotoCoreError, ClientError) as exc:
        raise EmbeddedError(f"restoring S3 from {snapshot_dir()} failed: {exc}", service="s3") from None
    finally:
        client.close()


# -- the record ------------------------------------------------------------------------------------
def _locked() -> contextlib.AbstractContextManager[None]:
    """One process at a time decides whether to reattach or start (two coordinators, a test and a demo)."""
    return locked(stack_dir() / "stack.lock")


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
