"""Honest reports: the billed/legacy cost ratio computed from each job, column names that say what
they measure, and a note when the ranks shared one machine's CPUs."""

from __future__ import annotations

import pytest

from services.coordinator.finish import execution
from services.coordinator.pricing import load_prices
from services.coordinator.report import cost_ratio, render_report, render_table, seed_table_row, shared_cpu_note
from services.coordinator.summary import Invocation, JobFacts, summarize


def job(memory_mb: float, used_mb: float, ranks: int = 4, **extra) -> dict:
    facts = JobFacts(job_id="job-r", function="cosmic-worker", region="us-east-1", world_size=ranks,
                     partition_label="25MB", partitions=ranks, input_bytes=ranks * 1278 * 20520, submitted_at=0.0,
                     finished_at=9.0, result_path="results/r")
    invocations = [Invocation(rank=rank, attempt=1, state="succeeded", started_at=1.0, ended_at=8.0,
                              duration_ms=6000.0, billed_duration_ms=6000.0, memory_size_mb=memory_mb,
                              max_memory_used_mb=used_mb) for rank in range(ranks)]
    document = dict(summarize(facts, invocations, [], None, None, None, load_prices()))
    document.update(extra)
    return document


def test_the_cost_ratio_is_the_jobs_own_not_a_constant():
    big, small = job(10240, 1024), job(2048, 1024)
    big_md, small_md = render_report(big, "md"), render_report(small, "md")
    assert "On this job the billed cost is 10.0x the legacy formula's" in big_md  # 10 GB configured, 1 GB used
    assert "On this job the billed cost is 2.0x the legacy formula's" in small_md
    assert "3x too low" not in big_md + small_md
    table = render_table([seed_table_row(big), seed_table_row(small)], "md")
    assert "Here the billed cost is 2.0x to 10.0x the legacy formula's, across these jobs." in table
    assert cost_ratio(1.0, None) is None and cost_ratio(None, 1.0) is None and cost_ratio(1.0, 0.0) is None


def test_columns_say_wall_time_and_mean_rank_time():
    table = render_table([seed_table_row(job(10240, 1024))], "md")
    header, _, row = table.splitlines()[:3]
    assert "| Wall time (s) | Mean rank time (s) |" in header and "Duration" not in header
    assert "| 9.00 | 6.00 |" in row  # submission to end 9 s; each rank 6 s
    assert "Mean rank time: the mean Lambda duration" in table


def test_a_note_when_ranks_shared_few_cores_and_none_otherwise():
    crowded = {"local": True, "host_cpus": 2, "ranks_at_once": 4, "threads_per_rank": 1}
    report = render_report(job(10240, 1024, execution=crowded), "md")
    assert "up to 4 at once on 2 CPUs" in report and "do not read scaling from this table" in report
    table = render_table([seed_table_row(job(10240, 1024, execution=crowded))], "text")
    assert "Shared CPUs" in table
    busy = {"local": True, "host_cpus": 2, "ranks_at_once": 2, "threads_per_rank": 1}  # every CPU taken
    assert "up to 2 at once on 2 CPUs" in (shared_cpu_note([busy]) or "")
    roomy = {"local": True, "host_cpus": 8, "ranks_at_once": 3, "threads_per_rank": 2}
    on_aws = {"local": False, "host_cpus": None, "ranks_at_once": 500, "threads_per_rank": 6}
    assert shared_cpu_note([roomy, on_aws, None]) is None
    assert "Shared CPUs" not in render_report(job(10240, 1024), "md")  # summaries written before it was recorded


def inv(start: float, end: float, rank: int = 0) -> Invocation:
    return Invocation(rank=rank, attempt=1, state="succeeded", started_at=start, ended_at=end, duration_ms=1.0,
                      billed_duration_ms=1.0, memory_size_mb=128, max_memory_used_mb=1.0)


@pytest.mark.parametrize(("endpoint", "local"), [("http://127.0.0.1:9001", True), ("http://localhost:9", True),
                                                 ("https://lambda.us-east-1.amazonaws.com", False), ("", False)])
def test_execution_says_whether_ranks_ran_here_and_how_many_at_once(endpoint, local):
    attempts = [inv(0, 5), inv(1, 3, 1), inv(2, 6, 2), inv(5, 7, 3), inv(6, 8, 4)]  # 3 overlap in [2, 3)
    documents = [{"runtime": {"threads": 1}}, {"runtime": {"threads": 2}}, {"legacy": True}]
    found = execution(attempts, documents, endpoint=endpoint)
    assert found["local"] is local and found["ranks_at_once"] == 3 and found["threads_per_rank"] == 2
    assert (found["host_cpus"] is not None) is local
    assert execution([], [], endpoint=endpoint)["ranks_at_once"] == 0
