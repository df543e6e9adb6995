"""Settings of the local Lambda runtime: ``COSMIC_<FIELD>`` variables, then these defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services import envconfig

ENV_PREFIX = "COSMIC_"
#: Largest synchronous request and response payload, as Lambda limits them.
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
#: Largest asynchronous (Event) request payload, as Lambda limits it.
MAX_EVENT_PAYLOAD = 1024 * 1024
#: What an invocation's LogType=Tail returns at most, as Lambda does.
LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class RuntimeSettings:
    """How the runtime listens, which handler its sandboxes run, and the function's limits."""

    #: Address and port of the Invoke API (boto3's ``endpoint_url`` / ``AWS_ENDPOINT_URL_LAMBDA``).
    worker_host: str = "127.0.0.1"
    worker_port: int = 8080
    #: The function name it answers to (it also answers to ``function``, as AWS's emulator does).
    worker_function: str = "cosmic-worker"
    #: The handler each sandbox runs, as ``module.function``.
    worker_handler: str = "services.worker.handler.handler"
    #: Warm sandboxes, each taking one invocation at a time: the concurrency limit.
    sandboxes: int = 2
    #: Function timeout, seconds (Lambda allows up to 900); a sandbox over it is killed and replaced.
    worker_timeout: float = 900.0
    #: Configured memory size, MB, as Lambda reports it (REPORT line); not enforced here.
    worker_memory_mb: int = 10240
    #: Seconds a new sandbox may take to ask for its first invocation.
    worker_init_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.worker_port <= 65535:
            raise envconfig.SettingsError(f"worker_port must be within 0..65535, got {self.worker_port}")
        if self.sandboxes < 1:
            raise envconfig.SettingsError(f"sandboxes must be at least 1, got {self.sandboxes}")
        if not 0 < self.worker_timeout <= 900:
            raise envconfig.SettingsError(f"worker_timeout must be within (0, 900] s, got {self.worker_timeout}")
        if not 128 <= self.worker_memory_mb <= 10240:
            raise envconfig.SettingsError(f"worker_memory_mb must be within 128..10240, got {self.worker_memory_mb}")
        if "." not in self.worker_handler:
            raise envconfig.SettingsError(f"worker_handler must be module.function, got {self.worker_handler!r}")

    @property
    def threads_per_sandbox(self) -> int:
        """The machine's cores split between the sandboxes (``COSMIC_THREADS``), at least 1."""
        return max(1, (os.cpu_count() or 1) // self.sandboxes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> RuntimeSettings:
        return envconfig.load(cls, ENV_PREFIX, environ, **overrides)
