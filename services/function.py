"""The worker function as the services that call it must agree on it: its name, its timeout, its CPU share.

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
#: Lambda's memory sizes, MB, smallest and largest.
MIN_MEMORY_MB, MAX_MEMORY_MB = 128, 10240
#: Memory at which Lambda gives a function one full vCPU, MB (AWS's Lambda guide, "Memory and computing power").
ONE_VCPU_MB = 1769
#: vCPUs at the largest memory size.
MAX_VCPUS = 6.0


def lambda_vcpus(memory_mb: float) -> float:
    """The CPU share Lambda gives a function configured with ``memory_mb``, in vCPUs.

    Lambda allocates CPU in proportion to configured memory: 1,769 MB is one vCPU, 10,240 MB is six.
    Below 1,769 MB the share is proportional (884 MB: 0.5 vCPU); above it this interpolates linearly
    to six vCPUs at 10,240 MB (AWS publishes those two points only). The coordinator prices
    samples per vCPU-second with it; the local runtime enforces it per sandbox.
    """
    if not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        raise ValueError(f"Lambda memory must be within {MIN_MEMORY_MB}..{MAX_MEMORY_MB} MB, got {memory_mb:g}")
    if memory_mb <= ONE_VCPU_MB:
        return memory_mb / ONE_VCPU_MB
    return 1.0 + (memory_mb - ONE_VCPU_MB) * (MAX_VCPUS - 1.0) / (MAX_MEMORY_MB - ONE_VCPU_MB)


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
