"""Figures that put jobs of any size, memory and world size on one scale: $ per million samples and
samples per vCPU-second, and the CPU the ranks had.

Lambda's CPU follows configured memory (:func:`services.function.lambda_vcpus`), so a vCPU-second is
the unit both of what a rank can do and, through memory, of what it costs. On the local runtime each
REPORT line says what CPU the sandbox really had (``cpu_vcpus``); on AWS it is Lambda's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypedDict

from services.function import MAX_MEMORY_MB, MIN_MEMORY_MB, lambda_vcpus


class Billed(Protocol):
    """What these figures need of an invocation (:class:`services.coordinator.summary.Invocation`)."""

    billed_duration_ms: float
    memory_size_mb: float
    cpu_vcpus: float | None
    cpu_enforced_by: str | None


class CpuHad(TypedDict):
    """The CPU the ranks had: Lambda's share of the configured memory, and (local runtime) what each
    sandbox really had and what enforced it; ``vcpus_min``/``vcpus_max`` are None on AWS."""

    lambda_vcpus: float | None
    vcpus_min: float | None
    vcpus_max: float | None
    enforced_by: list[str]


def share(memory_mb: float) -> float:
    """Lambda's vCPUs for ``memory_mb``, clamped to Lambda's sizes (a REPORT line is never refused)."""
    return lambda_vcpus(min(max(memory_mb, MIN_MEMORY_MB), MAX_MEMORY_MB))


def vcpus(invocation: Billed) -> float:
    """The vCPUs an invocation had: as its REPORT said, else Lambda's share of its configured memory."""
    return invocation.cpu_vcpus if invocation.cpu_vcpus else share(invocation.memory_size_mb)


def cpu_had(invocations: Sequence[Billed]) -> CpuHad:
    configured = max((inv.memory_size_mb for inv in invocations), default=None)
    reported = [inv.cpu_vcpus for inv in invocations if inv.cpu_vcpus is not None]
    return {"lambda_vcpus": share(configured) if configured else None,
            "vcpus_min": min(reported, default=None), "vcpus_max": max(reported, default=None),
            "enforced_by": sorted({inv.cpu_enforced_by for inv in invocations if inv.cpu_enforced_by})}


def efficiency(invocations: Sequence[Billed], samples: int | None, total_usd: float,
               legacy_usd: float | None) -> dict[str, Any]:
    """The summary's ``cpu``, ``vcpu_seconds``, ``samples_per_vcpu_s``, ``usd_per_million_samples`` and
    ``legacy_usd_per_million_samples`` (the seed's formula, for their rows' $0.24-0.57)."""
    vcpu_s = sum(inv.billed_duration_ms / 1000 * vcpus(inv) for inv in invocations)
    per_million = 1e6 / samples if samples else None
    return {"cpu": cpu_had(invocations), "vcpu_seconds": vcpu_s,
            "samples_per_vcpu_s": samples / vcpu_s if samples and vcpu_s > 0 else None,
            "usd_per_million_samples": total_usd * per_million if per_million else None,
            "legacy_usd_per_million_samples":
                legacy_usd * per_million if per_million and legacy_usd is not None else None}
