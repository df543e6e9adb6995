"""The worker function as the services that call it must agree on it: its name and its timeout.

The coordinator invokes it by name and waits at least its timeout for an answer; the local Lambda
runtime answers to the name and kills a sandbox over the timeout. Both read this one definition
(``COSMIC_WORKER_FUNCTION``, ``COSMIC_WORKER_TIMEOUT``), as a field of their own settings.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from services import envconfig

#: Lambda's longest timeout, seconds.
MAX_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class WorkerFunction:
    """The deployed inference function, seen from the outside."""

    ENV_PREFIX: ClassVar[str] = "COSMIC_WORKER_"

    #: The function name the coordinator invokes when a payload names none, and the local runtime answers to.
    function: str = "cosmic-worker"
    #: The function's timeout, seconds: the coordinator reads an invocation for this long plus a margin,
    #: the local runtime kills an invocation over it.
    timeout: float = MAX_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.function:
            raise envconfig.SettingsError("COSMIC_WORKER_FUNCTION must not be empty")
        if not 0 < self.timeout <= MAX_TIMEOUT_S:
            raise envconfig.SettingsError(
                f"COSMIC_WORKER_TIMEOUT must be within (0, {MAX_TIMEOUT_S:g}] s, got {self.timeout}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> WorkerFunction:
        return envconfig.load(cls, None, environ, **overrides)
