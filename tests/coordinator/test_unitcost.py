"""$ per million samples, samples per vCPU-second and the CPU each rank had, from summary to report."""

from __future__ import annotations

import pytest

from services.coordinator.invoker import parse_report
from services.coordinator.pricing import load_prices
from services.coordinator.report import render_report
from services.coordinator.summary import Invocation, JobFacts, summarize


@pytest.fixture(scope="module")
def prices():
    return load_prices()


def _job(prices, memory: int, seconds: float, cpu: float | None = None, enforced: str | None = None, ranks: int = 2):
    invocations = [Invocation(rank=rank, attempt=1, state="succeeded", started_at=0.0, ended_at=seconds,
                              duration_ms=seconds * 1e3, billed_duration_ms=seconds * 1e3, memory_size_mb=memory,
                              max_memory_used_mb=900.0, cpu_vcpus=cpu, cpu_enforced_by=enforced)
                   for rank in range(ranks)]
    facts = JobFacts(job_id="j", function="cosmic-worker", region="us-east-1", world_size=ranks,
                     partition_label="25MB", partitions=ranks, input_bytes=ranks * 1278 * 20520, submitted_at=0.0,
                     finished_at=seconds + 1, result_path="r/j")
    docs = [{"rank": rank, "num_samples": 1278} for rank in range(ranks)]
    return summarize(facts, invocations, docs, None, None, None, prices)


def test_seed_rows_cost_per_million_samples_by_their_formula(prices):
    """Their 100MB row: 130 ranks of 25.0 s using 7.0 GB, 5,113 samples each: $0.38 by their formula, about
    $0.57 per million samples (the brief's 0.24-0.57); AWS bills configured memory, so ours is higher."""
    invocations = [Invocation(rank=r, attempt=1, state="succeeded", started_at=0, ended_at=25, duration_ms=25e3,
                              billed_duration_ms=25e3, memory_size_mb=10240, max_memory_used_mb=7.0 * 1024)
                   for r in range(130)]
    facts = JobFacts(job_id="j", function="f", region="us-east-1", world_size=130, partition_label="100MB",
                     partitions=130, input_bytes=0, submitted_at=0, finished_at=30, result_path="r")
    summary = summarize(facts, invocations, [{"rank": r, "num_samples": 5113} for r in range(130)], None, None,
                        None, prices)
    assert summary["legacy_cost"]["total"] == pytest.approx(0.379, abs=0.001)
    assert summary["legacy_usd_per_million_samples"] == pytest.approx(0.57, abs=0.005)
    assert summary["usd_per_million_samples"] / summary["legacy_usd_per_million_samples"] == pytest.approx(
        10 / 7, rel=0.01)  # billed 10 GB configured, not 7 GB used
    assert summary["samples_per_vcpu_s"] == pytest.approx(5113 / (25 * 6), rel=1e-6)  # 10,240 MB: 6 vCPUs


def test_samples_per_vcpu_second_uses_the_cpu_the_sandbox_really_had(prices):
    on_aws = _job(prices, 1769, 10.0)
    assert on_aws["cpu"] == {"lambda_vcpus": 1.0, "vcpus_min": None, "vcpus_max": None, "enforced_by": []}
    assert on_aws["samples_per_vcpu_s"] == pytest.approx(2 * 1278 / 20.0)
    local = _job(prices, 10240, 10.0, cpu=2.0, enforced="cgroup-v1")  # 6 vCPUs asked, the host has 2
    assert local["cpu"]["vcpus_max"] == 2.0 and local["cpu"]["enforced_by"] == ["cgroup-v1"]
    assert local["samples_per_vcpu_s"] == pytest.approx(2 * 1278 / 40.0)
    assert local["usd_per_million_samples"] == pytest.approx(local["cost"]["total"] / (2 * 1278) * 1e6)


def test_report_shows_the_cpu_each_rank_had_and_the_unit_costs(prices):
    report = render_report(_job(prices, 884, 4.0, cpu=0.5, enforced="cgroup-v1"), "md")
    assert "CPU per rank on this runtime: 0.50 vCPU, enforced by cgroup-v1 (Lambda's share" in report
    assert "$ per million samples billed" in report and "samples per vCPU-second" in report
    assert "CPU per rank: Lambda's share of the configured memory: 1.00 vCPU" in render_report(
        _job(prices, 1769, 4.0), "md")


def test_report_line_cpu_field_is_parsed_into_the_ranks_record():
    line = ("REPORT RequestId: x\tDuration: 10.00 ms\tBilled Duration: 10 ms\tMemory Size: 884 MB\t"
            "Max Memory Used: 50 MB\tCPU: 0.50 vCPU by cgroup-v1\tInit Duration: 3.00 ms")
    report = parse_report("START\n" + line + "\n")
    assert report["cpu_vcpus"] == 0.5 and report["cpu_enforced_by"] == "cgroup-v1"
    assert report["memory_size_mb"] == 884 and report["init_duration_ms"] == 3.0
    assert "cpu_vcpus" not in parse_report("REPORT RequestId: x\tDuration: 1.00 ms\n")  # AWS's has none


def test_the_ranks_record_carries_the_cpu_into_the_summary():
    from services.coordinator.finish import invocations
    from services.coordinator.state import Attempt, RankRecord

    report = parse_report("REPORT RequestId: x\tDuration: 2000.00 ms\tBilled Duration: 2000 ms\tMemory Size: 884 MB\t"
                          "Max Memory Used: 50 MB\tCPU: 0.50 vCPU by cgroup-v1\n")
    record = RankRecord(rank=0, state="succeeded", attempts=[Attempt(1, 0.0, 2.0, "succeeded", report=report)])
    (found,) = invocations({0: RankRecord.from_dict(record.to_dict())})  # as the journal stores and reads it
    assert (found.cpu_vcpus, found.cpu_enforced_by, found.memory_size_mb) == (0.5, "cgroup-v1", 884.0)
