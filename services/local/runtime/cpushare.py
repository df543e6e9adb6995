"""Lambda's CPU share per sandbox: a cgroup CPU quota as root, else CPU affinity, else nothing.

Lambda gives a function CPU in proportion to its configured memory (:func:`services.function.lambda_vcpus`:
1,769 MB is one vCPU). Without that, every local sandbox could use the whole machine, and a sweep of
world sizes on a 2-core machine measured contention rather than scaling. :class:`CpuLimiter` gives each
sandbox its share, capped at the host's cores:

- **cgroup v2** when the ``cpu`` controller is available at this process's cgroup: ``cpu.max``;
- **cgroup v1** when a ``cpu`` hierarchy is mounted writable: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
- **affinity** otherwise: the sandbox is pinned to ``round(share)`` cores (at least one, so a share
  under one core is not enforced there, and the REPORT line says so by the cores it shows).

The sandbox's thread count (``COSMIC_WORKER_THREADS``) follows its share (with nothing to enforce it,
the host's cores divided among the sandboxes).

The cgroups are named after the runtime that made them, ``cosmic-runtime-<pid>-<start ticks>/sandbox-<i>``,
so that a runtime killed before it could remove them is recognised by the next one (the pid is dead or
started at another time): its leftover groups are emptied into their parent and removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from services.function import lambda_vcpus
from services.local.processes import started_ticks
from services.logs import event

log = logging.getLogger("cosmic.worker.runtime")
#: CFS period, microseconds (the kernel's default).
PERIOD_US = 100_000
PREFIX = "cosmic-runtime-"
_GROUP = re.compile(rf"^{PREFIX}(?P<pid>\d+)-(?P<started>\d*)$")  # (no start time where /proc was unreadable)


@dataclass(frozen=True)
class CpuShare:
    """What CPU a sandbox has: Lambda's share for its memory, and what this machine enforces of it."""

    memory_mb: int
    #: Lambda's share at this memory, vCPUs.
    vcpus: float
    #: The cores the sandbox may use here: the share capped at the host's cores (affinity: whole cores).
    cores: float
    #: ``cgroup-v2``, ``cgroup-v1``, ``affinity`` or ``none``.
    enforced_by: str
    threads: int
    #: Why a stronger mechanism was not used ("" when a cgroup enforces it).
    reason: str = ""

    def report_field(self) -> str:
        """The REPORT line's field: ``CPU: 1.00 vCPU by cgroup-v1`` (parsed by the coordinator's invoker)."""
        return f"CPU: {self.cores:.2f} vCPU by {self.enforced_by}"


@dataclass(frozen=True)
class _Hierarchy:
    """A cgroup hierarchy with the cpu controller: where this process's group is, and which version."""

    version: int
    parent: Path


class CpuLimiter:
    """Puts each sandbox process under its CPU share; one per runtime, :meth:`close` on stop."""

    def __init__(self, memory_mb: int, sandboxes: int, *, proc: Path = Path("/proc"),
                 host_cores: int | None = None, reserve: bool = False) -> None:
        self.proc, self.reserve = proc, reserve
        self.host_cores = host_cores or len(_allowed_cpus()) or os.cpu_count() or 1
        self.sandboxes = sandboxes
        vcpus = lambda_vcpus(memory_mb)
        # what a cgroup would give, set before looking for one (the runtime's group is weighed by its threads)
        cores = min(vcpus, float(self.host_cores))
        self.share = CpuShare(memory_mb, vcpus, cores, "none", _threads(cores, self.host_cores))
        self._hierarchy, reason = self._find_hierarchy()
        if self._hierarchy is not None:
            enforced = f"cgroup-v{self._hierarchy.version}"
        elif hasattr(os, "sched_setaffinity"):
            enforced, cores = "affinity", float(max(1, min(self.host_cores, round(vcpus))))
        else:
            enforced, cores = "none", float(self.host_cores)
        # threads follow the share, as a Lambda of that memory would run them; with nothing enforcing it,
        # the sandboxes split the cores instead, as they always did
        threads = _threads(cores, self.host_cores) if enforced != "none" else max(1, self.host_cores // sandboxes)
        self.share = CpuShare(memory_mb, vcpus, cores, enforced, threads, reason)
        self._groups: dict[int, Path] = {}

    # -- finding where to make groups ------------------------------------------------------------
    def _find_hierarchy(self) -> tuple[_Hierarchy | None, str]:
        if os.geteuid() != 0:
            return None, "not root: cgroups cannot be made"
        reasons = []
        for version, parent in self._candidates():
            try:
                self._prepare(version, parent)
            except OSError as exc:
                reasons.append(f"cgroup v{version} at {parent}: {exc.strerror or exc}")
                with contextlib.suppress(OSError):  # made before the failure: not left behind
                    (parent / _runtime_name(self.proc)).rmdir()
                continue
            return _Hierarchy(version, parent), ""
        return None, "; ".join(reasons) or "no cgroup hierarchy with the cpu controller is mounted"

    def _candidates(self) -> list[tuple[int, Path]]:
        """(version, this process's group) for each mounted hierarchy with the cpu controller, v2 first."""
        own = _own_groups(self.proc / "self" / "cgroup")
        found: list[tuple[int, Path]] = []
        for mount, fstype, options in _mounts(self.proc / "self" / "mounts"):
            if fstype == "cgroup2":
                controllers = (mount / "cgroup.controllers")
                try:
                    if "cpu" not in controllers.read_text().split():
                        continue
                except OSError:
                    continue
                found.insert(0, (2, _inside(mount, own.get(""))))
            elif fstype == "cgroup" and "cpu" in options.split(","):
                found.append((1, _inside(mount, own.get("cpu"))))
        return found

    def _prepare(self, version: int, parent: Path) -> None:
        """Check the hierarchy can take our groups (and clear a crashed runtime's); OSError when not."""
        self._remove_stale(parent)
        if version == 2:
            _enable_cpu(parent)
        group = parent / _runtime_name(self.proc)
        group.mkdir(exist_ok=True)
        if version == 2:
            _enable_cpu(group)
        # the runtime's group competes with the rest of the machine as one task of its weight: weigh it as
        # all its sandboxes' threads (the sandboxes' own weights count only among themselves)
        weight = self._weight(version, self.sandboxes * self.share.threads)
        (group / ("cpu.weight" if version == 2 else "cpu.shares")).write_text(str(weight))

    def _remove_stale(self, parent: Path) -> None:
        """Remove the groups of runtimes that are gone, their leftover processes moved to ``parent``."""
        for group in sorted(parent.glob(f"{PREFIX}*")):
            match = _GROUP.match(group.name)
            ticks = started_ticks(int(match["pid"]), self.proc) if match else ""
            if match is None or (ticks and match["started"] in (ticks, "")):
                continue  # not ours, or its runtime still runs (or may: its start time was not recorded)
            try:
                for child in sorted(path for path in group.iterdir() if path.is_dir()):
                    _empty_into(child, parent)
                    child.rmdir()
                _empty_into(group, parent)
                group.rmdir()
            except OSError as exc:
                event(log, "cgroup_stale_kept", logging.WARNING, group=str(group), error=str(exc))
                continue
            event(log, "cgroup_stale_removed", group=str(group))

    # -- per sandbox ------------------------------------------------------------------------------
    def apply(self, index: int, pid: int) -> None:
        """Put sandbox ``index``'s process ``pid`` (just started) under the share."""
        if self._hierarchy is not None:
            group = self._group(index)
            (group / "cgroup.procs").write_text(str(pid))
        elif self.share.enforced_by == "affinity":
            cpus = sorted(_allowed_cpus())
            count = int(self.share.cores)
            os.sched_setaffinity(pid, {cpus[(index * count + k) % len(cpus)] for k in range(count)})

    def _group(self, index: int) -> Path:
        if index not in self._groups:
            assert self._hierarchy is not None
            group = self._hierarchy.parent / _runtime_name(self.proc) / f"sandbox-{index}"
            group.mkdir(exist_ok=True)
            quota = max(1000, round(self.share.cores * PERIOD_US))
            weight = str(self._weight(self._hierarchy.version, self.share.threads))
            if self._hierarchy.version == 2:
                (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
                (group / "cpu.weight").write_text(weight)
            else:
                (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
                (group / "cpu.shares").write_text(weight)
            self._groups[index] = group
        return self._groups[index]

    def _weight(self, version: int, threads: int) -> int:
        """A group competes for the CPU as one task of its weight: as many tasks as the threads it runs, so
        that on a busy machine it gets what unlimited processes with those threads would (up to its quota);
        reserved, the largest weight, so that it gets its whole share whatever else runs, as on Lambda."""
        if version == 2:
            return 10_000 if self.reserve else min(10_000, 100 * threads)
        return 262_144 if self.reserve else 1024 * threads

    def close(self) -> None:
        """Remove this runtime's groups (call after its sandboxes are stopped)."""
        if self._hierarchy is None:
            return
        group = self._hierarchy.parent / _runtime_name(self.proc)
        try:
            for child in self._groups.values():
                _empty_into(child, self._hierarchy.parent)
                child.rmdir()
            group.rmdir()
        except OSError as exc:
            event(log, "cgroup_not_removed", logging.WARNING, group=str(group), error=str(exc))
        self._groups.clear()


def _threads(cores: float, host_cores: int) -> int:
    """Threads for a share of ``cores``: enough to use it, at least one, at most the host's cores."""
    return max(1, min(math.ceil(cores - 1e-9), host_cores))


def _runtime_name(proc: Path) -> str:
    return f"{PREFIX}{os.getpid()}-{started_ticks(os.getpid(), proc)}"


def _own_groups(path: Path) -> dict[str, str]:
    """This process's group per controller ("" for v2's unified hierarchy), from ``/proc/self/cgroup``."""
    groups: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, controllers, group = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = group
    return groups


def _mounts(path: Path) -> list[tuple[Path, str, str]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [(Path(fields[1]), fields[2], fields[3]) for fields in (line.split() for line in lines) if len(fields) > 3]


def _inside(mount: Path, group: str | None) -> Path:
    """This process's group under ``mount``, or the mount itself when that path is not there (a namespace)."""
    candidate = mount / (group or "/").lstrip("/")
    return candidate if candidate.is_dir() else mount


def _enable_cpu(group: Path) -> None:
    control = group / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def _empty_into(group: Path, parent: Path) -> None:
    """Move what still runs in ``group`` to ``parent``, so that it can be removed."""
    for pid in (group / "cgroup.procs").read_text().split():
        try:
            (parent / "cgroup.procs").write_text(pid)
        except ProcessLookupError:
            pass  # exited meanwhile


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))
