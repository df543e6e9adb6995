"""Settings of the local Lambda runtime: ``COSMIC_RUNTIME_<FIELD>`` variables, then these defaults.

The function's name and timeout are the worker's (``COSMIC_WORKER_FUNCTION``, ``COSMIC_WORKER_TIMEOUT``,
:mod:`services.function`), the ones the coordinator reads too. Settings that were read under the
worker's name before the runtime had its own prefix keep those names as aliases (``ENV_ALIASES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from services import envconfig
from services.function import WorkerFunction

ENV_PREFIX = "COSMIC_RUNTIME_"
#: Largest synchronous request and response payload, as Lambda limits them.
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
#: Largest asynchronous (Event) request payload, as Lambda limits it.
MAX_EVENT_PAYLOAD = 1024 * 1024
#: What an invocation's LogType=Tail returns at most, as Lambda does.
LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class RuntimeSettings:
    """How the runtime listens, which handler its sandboxes run, and the function's limits."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {
        "host": "COSMIC_WORKER_HOST", "port": "COSMIC_WORKER_PORT", "handler": "COSMIC_WORKER_HANDLER",
        "sandboxes": "COSMIC_SANDBOXES", "memory_mb": "COSMIC_WORKER_MEMORY_MB",
        "init_timeout": "COSMIC_WORKER_INIT_TIMEOUT"}

    #: Address and port of the Invoke API (boto3's ``endpoint_url`` / ``AWS_ENDPOINT_URL_LAMBDA``).
    host: str = "127.0.0.1"
    port: int = 8080
    #: The function name it answers to (it also answers to ``function``, as AWS's emulator does), and
    #: the function's timeout (Lambda allows up to 900 s): a sandbox over it is killed and replaced.
    worker: WorkerFunction = field(default_factory=WorkerFunction)
    #: The handler each sandbox runs, as ``module.function``.
    handler: str = "services.worker.handler.handler"
    #: Warm sandboxes, each taking one invocation at a time: the concurrency limit.
    sandboxes: int = 2
    #: Configured memory size, MB, as Lambda reports it (REPORT line). Its CPU share (1,769 MB: one vCPU)
    #: is enforced per sandbox (:mod:`.cpushare`); the memory itself is not.
    memory_mb: int = 10240
    #: Seconds a new sandbox may take to ask for its first invocation.
    init_timeout: float = 60.0
    #: Reserve each sandbox's CPU share, as Lambda guarantees it: its cgroup gets the largest weight, so that
    #: on a busy machine it still gets its whole share (never more: the quota caps it). Off: it competes as an
    #: unlimited process with its threads would. For benchmarks on a shared machine; it slows everything else.
    cpu_reserve: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise envconfig.SettingsError(f"{variable('port')} must be within 0..65535, got {self.port}")
        if self.sandboxes < 1:
            raise envconfig.SettingsError(
                f"{variable('sandboxes')}: sandboxes must be at least 1, got {self.sandboxes}")
        if not 128 <= self.memory_mb <= 10240:
            raise envconfig.SettingsError(f"{variable('memory_mb')} must be within 128..10240, got {self.memory_mb}")
        if "." not in self.handler:
            raise envconfig.SettingsError(f"{variable('handler')} must be module.function, got {self.handler!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> RuntimeSettings:
        return envconfig.load(cls, None, environ, **overrides)


def variable(field: str) -> str:
    """The variable that sets ``field``, for messages: ``COSMIC_RUNTIME_SANDBOXES (formerly COSMIC_SANDBOXES)``."""
    return envconfig.describe(RuntimeSettings, field)
