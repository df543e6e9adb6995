"""Lambda's CPU share on the local runtime: 1,769 MB is one vCPU, enforced per sandbox.

The measured test runs a handler with two threads busy in C code (so that, unlimited, it could use
both cores of this machine) and checks the CPU time it gets per wall second against its share.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from services.function import lambda_vcpus
from services.local.runtime import cpushare
from services.local.runtime.cpushare import CpuLimiter

TOLERANCE = 0.15
#: Seconds the handler keeps its two threads busy.
BUSY_S = 1.0


def test_lambda_share_follows_memory() -> None:
    assert lambda_vcpus(1769) == 1.0
    assert lambda_vcpus(884) == pytest.approx(0.5, abs=0.001)
    assert lambda_vcpus(10240) == pytest.approx(6.0)
    assert lambda_vcpus(3538) == pytest.approx(2.04, abs=0.01)  # linear between AWS's two published points
    with pytest.raises(ValueError, match=r"128\.\.10240"):
        lambda_vcpus(64)


def _fake_proc(tmp_path: Path, mounts: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text(mounts)
    (proc / "self" / "cgroup").write_text("0::/\n")
    return proc


def test_without_a_cpu_cgroup_it_falls_back_to_affinity_in_whole_cores(tmp_path: Path) -> None:
    """No cgroup hierarchy with the cpu controller: pinned to round(share) cores, at least one, and
    the share it reports is that (0.5 vCPU cannot be had by affinity: it says 1.00)."""
    proc = _fake_proc(tmp_path, "proc /proc proc rw 0 0\n")
    half = CpuLimiter(884, 2, proc=proc, host_cores=2).share
    assert (half.enforced_by, half.cores, half.threads) == ("affinity", 1.0, 1)
    assert half.reason and half.report_field() == "CPU: 1.00 vCPU by affinity"
    big = CpuLimiter(10240, 2, proc=proc, host_cores=2).share
    assert (big.cores, big.threads) == (2.0, 2)  # capped at the host's cores
    assert big.vcpus == pytest.approx(6.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are made as root only")
def test_cgroup_v2_is_preferred_and_gets_cpu_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A v2 hierarchy offering the cpu controller (a stand-in tree: this machine has none) is used first:
    the controller enabled for the mount's group and the runtime's, each sandbox's quota in ``cpu.max``."""
    enabled: list[str] = []
    monkeypatch.setattr(cpushare, "_enable_cpu", lambda group: enabled.append(group.name))  # (the kernel's files)
    mount = tmp_path / "unified"
    mount.mkdir()
    (mount / "cgroup.controllers").write_text("cpu memory pids\n")
    proc = _fake_proc(tmp_path, f"cgroup2 {mount} cgroup2 rw 0 0\n")
    limiter = CpuLimiter(884, 2, proc=proc, host_cores=2)
    assert limiter.share.enforced_by == "cgroup-v2" and limiter.share.report_field() == "CPU: 0.50 vCPU by cgroup-v2"
    assert enabled == ["unified", next(mount.glob(f"{cpushare.PREFIX}*")).name]
    limiter.apply(1, 12345)
    group = next(mount.glob(f"{cpushare.PREFIX}*/sandbox-1"))
    assert (group / "cpu.max").read_text() == "49972 100000" and (group / "cgroup.procs").read_text() == "12345"


def _cpu_hierarchy() -> Path | None:
    """This machine's writable cgroup v1 cpu hierarchy (this process's group in it), if any."""
    limiter = CpuLimiter(1769, 1)
    hierarchy = limiter._hierarchy
    limiter.close()
    return hierarchy.parent if hierarchy is not None and hierarchy.version == 1 else None


@pytest.mark.integration
def test_groups_of_a_crashed_runtime_are_removed_and_ours_on_close() -> None:
    parent = _cpu_hierarchy()
    if parent is None:
        pytest.skip("no writable cgroup v1 cpu hierarchy here (needs root and a mounted cpu controller)")
    stale = parent / f"{cpushare.PREFIX}999999999-1"  # no such pid: its runtime is gone
    (stale / "sandbox-0").mkdir(parents=True)
    unknown = parent / f"{cpushare.PREFIX}999999998-"  # nor this one (its start time could not be read)
    unknown.mkdir()
    limiter = CpuLimiter(1769, 1)
    try:
        assert not stale.exists() and not unknown.exists(), "the crashed runtimes' groups are removed at start"
        group = limiter._group(0)
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "100000"
    finally:
        limiter.close()
    assert not group.parent.exists(), "close removes the runtime's own groups"


def _measure(memory_mb: int, tmp_path: Path) -> tuple[float, str]:
    """CPU seconds per wall second the busy handler got in a sandbox of ``memory_mb``, and its REPORT line."""
    from tests.common import lambda_client
    from tests.processes import runtime_process

    log = tmp_path / f"runtime-{memory_mb}.log"
    with runtime_process(log, "--sandboxes", "1", "--memory-mb", str(memory_mb), "--cpu-reserve", "--handler",
                         "tests.local.cpu_handler.handler") as endpoint:
        response = lambda_client(endpoint).invoke(FunctionName="cosmic-worker", LogType="Tail",
                                                  Payload=json.dumps({"seconds": BUSY_S}))
        body = json.loads(response["Payload"].read())
        report = base64.b64decode(response["LogResult"]).decode().splitlines()[-1]
    return float(body["cpu_per_wall_s"]), report


@pytest.mark.integration
def test_a_sandbox_gets_its_cpu_share(tmp_path: Path) -> None:
    """Never more than its share (the quota), and its whole share: reserved (``--cpu-reserve``, the largest
    cgroup weight, as Lambda guarantees the share), whatever else runs on this shared machine."""
    pytest.importorskip("boto3")
    pytest.importorskip("awslambdaric")
    full, report = _measure(1769, tmp_path)
    enforced = report.rsplit("CPU: ", 1)[-1]
    if "cgroup" not in enforced:
        pytest.skip(f"this machine cannot enforce a fractional CPU share (needs root and a cgroup cpu controller): "
                    f"the runtime reported {enforced!r}")
    half, half_report = _measure(884, tmp_path)
    assert "CPU: 1.00 vCPU by cgroup-v" in report and "CPU: 0.50 vCPU by cgroup-v" in half_report
    assert full == pytest.approx(1.0, rel=TOLERANCE), f"at 1769 MB: {full:.2f} core-s per wall s"
    assert half == pytest.approx(0.5, rel=TOLERANCE), f"at 884 MB: {half:.2f} core-s per wall s"
