"""The embedded stack's children: each service started detached on loopback, awaited, and stopped.

Each child runs in its own session (``start_new_session``), so it outlives the process that
started it and is stopped with its process group (the runtime's sandboxes go with it). A
:class:`Service` is what :mod:`services.local.stack` records of one: pid, port, log and the marker
that tells a recycled pid from ours. Logs go to ``<folder>/<name>.log``, appended.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.local.errors import EmbeddedError
from services.local.processes import (
    ROOT,
    STOP_TIMEOUT,
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
from services.local.s3server import s3_answers
from services.logs import event
from services.ports import free_ports

log = logging.getLogger("cosmic.coordinator.embedded")

WORKER_FUNCTION = "cosmic-worker"
LOCAL_CREDENTIAL = "cosmic-local"
REGION = "us-east-1"
#: Seconds each service may take to answer after it is started (the runtime imports torch in every sandbox).
READY_TIMEOUT = {"s3": 30.0, "runtime": 120.0, "rendezvous": 20.0}


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


def start_services(folder: Path, sandboxes: int, memory_mb: int) -> tuple[Service, Service, Service]:
    """S3, the runtime and the rendezvous, started at once on free ports and ready; EmbeddedError
    naming the service that did not start (what did start is stopped)."""
    started: list[Service] = []
    try:
        # all at once: ports asked for one by one, before any child binds, can repeat
        s3_port, runtime_port, pair_port, health_port = free_ports(4)
        s3 = _spawn(folder, started, "s3", python("moto.server", "-H", "127.0.0.1", "-p", str(s3_port)),
                    s3_port, "moto.server", child_env(None, MOTO_PORT=str(s3_port)))
        runtime = _spawn_runtime(folder, started, runtime_port, s3_port, sandboxes, memory_mb)
        rendezvous = _spawn(folder, started, "rendezvous",
                            python("services.rendezvous", "--host", "127.0.0.1", "--port", str(pair_port),
                                   "--health-host", "127.0.0.1", "--health-port", str(health_port)),
                            pair_port, "services.rendezvous", child_env(None), health_port=health_port)
        s3.wait_ready(lambda: s3_answers(s3_port), READY_TIMEOUT["s3"], poll=0.1)
        rendezvous.wait_ready(lambda: healthz(health_port), READY_TIMEOUT["rendezvous"], poll=0.1)
        runtime.wait_ready(lambda: dry_run(runtime_port), READY_TIMEOUT["runtime"], poll=0.1)
    except ChildError as exc:
        stop_services(started, STOP_TIMEOUT)
        raise EmbeddedError(str(exc), service=exc.name) from None
    except BaseException:
        stop_services(started, STOP_TIMEOUT)
        raise
    return started[0], started[1], started[2]


def start_runtime(folder: Path, s3_port: int, sandboxes: int, memory_mb: int, ports: Iterable[int]) -> Service:
    """The runtime alone, ready, on the first of ``ports`` it can have (0: a free one)."""
    error: ChildError | None = None
    for wanted in ports:
        started: list[Service] = []
        port = wanted or free_ports(1)[0]
        try:
            child = _spawn_runtime(folder, started, port, s3_port, sandboxes, memory_mb)
            child.wait_ready(lambda port=port: dry_run(port), READY_TIMEOUT["runtime"], poll=0.1)
            return started[0]
        except ChildError as exc:
            stop_services(started, STOP_TIMEOUT)
            event(log, "embedded_runtime_not_started", logging.WARNING, port=port, error=str(exc).splitlines()[0])
            error = exc
        except BaseException:
            stop_services(started, STOP_TIMEOUT)
            raise
    raise EmbeddedError(str(error) if error else "no port to start the runtime on", service="runtime")


def stop_services(services: Iterable[Service], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each service's process group (its sandboxes too), SIGKILL what outlives ``timeout``."""
    mine = {service.pid: service for service in services if service.alive()}
    for pid in stop_pids(mine, timeout, group=True):
        event(log, "embedded_kill", logging.WARNING, service=mine[pid].name, pid=pid)


def child_env(s3_endpoint: str | None, **extra: str) -> dict[str, str]:
    """Our environment without any AWS setting (no real account may leak in), plus the local ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=LOCAL_CREDENTIAL, AWS_SECRET_ACCESS_KEY=LOCAL_CREDENTIAL,
               AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION, PYTHONUNBUFFERED="1", **extra)
    if s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    return env


def _spawn_runtime(folder: Path, started: list[Service], port: int, s3_port: int, sandboxes: int,
                   memory_mb: int) -> Child:
    return _spawn(folder, started, "runtime",
                  python("services.local.runtime", "--host", "127.0.0.1", "--port", str(port),
                         "--sandboxes", str(sandboxes), "--memory-mb", str(memory_mb), "--function", WORKER_FUNCTION),
                  port, "services.local.runtime", child_env(f"http://127.0.0.1:{s3_port}"))


def _spawn(folder: Path, started: list[Service], name: str, command: list[str], port: int, marker: str,
           env: dict[str, str], health_port: int | None = None) -> Child:
    """Start one service in its own session (it outlives us), appended to ``started`` at once."""
    log_path = folder / f"{name}.log"
    child = start(command, name=f"the {name} service (port {port})", log=log_path, append=True, env=env, cwd=ROOT,
                  new_session=True)
    started.append(Service(name, child.pid, port, str(log_path), marker, health_port))
    return child


def dry_run(port: int) -> bool:
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
