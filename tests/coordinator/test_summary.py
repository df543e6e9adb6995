"""The job summary, cost and report, checked against figures worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from services.accuracy import redshift_metrics
from services.coordinator.pricing import PricesError, load_prices
from services.coordinator.report import render_report, render_table, seed_table_row
from services.coordinator.summary import Invocation, JobFacts, combined_data, summarize
from tests.common import REPO

X86 = 0.0000166667


@pytest.fixture(scope="module")
def prices():
    return load_prices()


def facts(**overrides) -> JobFacts:
    values = dict(job_id="job-1", function="cosmic-worker", region="us-east-1", world_size=2, partition_label="25MB",
                  partitions=2, input_bytes=2 * 1278 * 20520, submitted_at=1000.0, finished_at=1012.5,
                  result_path="results/job-1", s3_gets=10, s3_puts=4)
    values.update(overrides)
    return JobFacts(**values)


def inv(rank, attempt=1, state="succeeded", duration_ms=900.0, billed_ms=1000.0, memory=10240, used=2048.0,
        error=None, start=1001.0, end=1002.0, init=None) -> Invocation:
    return Invocation(rank=rank, attempt=attempt, state=state, started_at=start, ended_at=end, error=error,
                      duration_ms=duration_ms, billed_duration_ms=billed_ms, memory_size_mb=memory,
                      max_memory_used_mb=used, init_duration_ms=init)


def docs(*samples: int) -> list[dict]:
    return [{"rank": rank, "num_samples": count, "total_cpu_time (seconds)": 1.0} for rank, count in enumerate(samples)]


def retried_job() -> list[Invocation]:
    """Two ranks at 10,240 MB, every attempt billed 1,000 ms; rank 1 failed once, then succeeded."""
    return [inv(0, duration_ms=900.0, init=250.0),
            inv(1, attempt=1, state="failed", duration_ms=1000.0, used=1024.0, error="MemoryError: out of memory"),
            inv(1, attempt=2, duration_ms=950.0, start=1003.0, end=1004.0)]


def seed_job(prices) -> dict:
    """The seed table's 25MB row: 517 ranks of 6.55 s each, 2.8 GB used of 10,240 MB configured."""
    invocations = [inv(rank, duration_ms=6550.0, billed_ms=6550.0, used=2.8 * 1024) for rank in range(517)]
    return summarize(facts(world_size=517, partitions=517, s3_gets=0, s3_puts=0), invocations, docs(*[1278] * 517),
                     None, None, None, prices)


# -- prices ---------------------------------------------------------------------------------------
def test_prices_file_is_labelled_and_holds_the_list_prices(prices):
    assert (prices.region, prices.as_of, prices.currency) == ("us-east-1", "2026-11", "USD")
    assert "check" in prices.note
    assert prices.gb_second("x86_64") == X86
    assert prices.gb_second("arm64") == 0.0000133334
    assert prices.lambda_requests_per_million == 0.20
    assert prices.s3_put_copy_post_list_per_thousand == 0.005
    assert prices.s3_get_per_thousand == 0.0004
    with pytest.raises(ValueError, match="mips"):
        prices.gb_second("mips")


@pytest.mark.parametrize(("change", "field"), [
    ({"s3_get_per_thousand": None}, "s3_get_per_thousand"),
    ({"lambda_requests_per_million": "0.20"}, "lambda_requests_per_million"),
    ({"lambda_gb_second_x86_64": -1}, "lambda_gb_second_x86_64"),
    ({"as_of": "November"}, "as_of"),
    ({"region": ""}, "region"),
    ({"lambda_gb_secnd_arm64": 1e-5}, "lambda_gb_secnd_arm64"),
])
def test_a_bad_prices_file_names_the_field(tmp_path, change, field):
    raw = json.loads((REPO / "services/coordinator/prices.json").read_text())
    raw.update(change)
    raw = {key: value for key, value in raw.items() if value is not None}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(PricesError, match=field) as caught:
        load_prices(path)
    assert caught.value.field == field


def test_an_unreadable_prices_file_says_so(tmp_path):
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(PricesError, match="not valid JSON"):
        load_prices(tmp_path / "broken.json")
    with pytest.raises(PricesError, match="cannot read"):
        load_prices(tmp_path / "missing.json")


# -- cost ---------------------------------------------------------------------------------------
def test_cost_of_a_retried_job_by_hand(prices):
    summary = summarize(facts(), retried_job(), docs(1278, 1278), None, None, None, prices)
    # 3 attempts x 1 s billed x 10 GB configured, the failed attempt included
    assert summary["gb_seconds"] == pytest.approx(30.0)
    cost = summary["cost"]
    assert cost["lambda_compute"] == pytest.approx(30 * X86)  # $0.000500001
    assert cost["lambda_requests"] == pytest.approx(3 * 0.20 / 1e6)
    assert cost["s3_requests"] == pytest.approx(10 * 0.0004 / 1000 + 4 * 0.005 / 1000)  # $0.000024
    assert cost["total"] == pytest.approx(0.000500001 + 0.0000006 + 0.000024)
    assert cost["prices"] == "us-east-1 list prices of 2026-11 (USD)"
    # legacy: 3 requests x mean successful duration (0.9 s, 0.95 s) x 2 GB peak used x price
    assert summary["legacy_cost"]["total"] == pytest.approx(3 * 0.925 * 2 * X86)
    assert "ratio per job" in summary["legacy_cost"]["basis"]
    assert summary["invocations"] == {"attempts": 3, "succeeded": 2, "failed": 1, "cancelled": 0, "superseded": 0,
                                      "retried_ranks": [1], "cold_starts": 1}
    assert summary["samples"] == 2556
    assert summary["wall_time_s"] == 12.5
    assert summary["peak_memory_mb"] == 2048.0
    assert summary["configured_memory_mb"] == 10240


def test_arm64_is_priced_at_the_arm_rate(prices):
    summary = summarize(facts(architecture="arm64"), retried_job(), docs(1, 1), None, None, None, prices)
    assert summary["cost"]["lambda_compute"] == pytest.approx(30 * 0.0000133334)


def test_seed_table_row_legacy_formula_and_ours(prices):
    summary = seed_job(prices)
    row = seed_table_row(summary)
    assert row["requests"] == 517 and row["world_size"] == 517 and row["partition"] == "25MB"
    assert row["duration_s"] == pytest.approx(6.55)
    assert row["legacy_cost_usd"] == pytest.approx(517 * 6.55 * 2.8 * X86)
    assert round(row["legacy_cost_usd"], 2) == 0.16  # the figure in their table
    # what AWS bills: configured 10 GB instead of 2.8 GB used, plus $0.20 per million requests
    assert row["cost_usd"] == pytest.approx(517 * 6.55 * 10 * X86 + 517 * 0.2e-6)
    assert row["cost_usd"] / row["legacy_cost_usd"] == pytest.approx(3.6, abs=0.05)


def test_duration_percentiles_come_from_each_ranks_successful_attempt(prices):
    invocations = [inv(rank, duration_ms=1000.0 * (rank + 1)) for rank in range(20)]
    invocations.append(inv(19, attempt=2, state="failed", duration_ms=99_000.0, error="boom"))
    invocations[19] = inv(19, attempt=3, duration_ms=20_000.0)
    summary = summarize(facts(world_size=20), invocations, [], None, None, None, prices)
    stats = summary["rank_duration_s"]
    assert stats["count"] == 20
    assert stats["p50"] == pytest.approx(10.5)
    assert stats["p95"] == pytest.approx(19.05)
    assert stats["max"] == pytest.approx(20.0)
    assert stats["mean"] == pytest.approx(10.5)


# -- accuracy and the collective ------------------------------------------------------------------
def labelled(n=500, seed=7):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.0, 0.4, n)
    return (true + rng.normal(0, 0.01, n)).astype(np.float32), true


def test_accuracy_is_redshift_metrics_over_all_predictions(prices):
    predicted, true = labelled()
    summary = summarize(facts(), retried_job(), docs(250, 250), predicted, true, None, prices)
    assert summary["accuracy"] == redshift_metrics(predicted, true)
    assert summary["collective"]["status"] == "not run"
    assert summary["collective"]["agreed"] is None


def test_labels_without_predictions_are_refused(prices):
    with pytest.raises(ValueError, match="without predictions"):
        summarize(facts(), retried_job(), [], None, np.zeros(3), None, prices)


def collective_from(predicted, true, scale=1.0, samples_delta=0) -> dict:
    metrics = redshift_metrics(predicted, true)
    return {"world_size": 2, "num_samples": true.size + samples_delta,
            "accuracy": {name: value * scale for name, value in metrics.items()}}


def test_collective_agreement_true_within_tolerance(prices):
    predicted, true = labelled()
    collective = collective_from(predicted, true, scale=1 + 1e-6)
    agreement = summarize(facts(), retried_job(), docs(250, 250), predicted, true, collective, prices)["collective"]
    assert agreement["agreed"] is True and agreement["status"] == "agreed"
    assert agreement["max_relative_difference"] == pytest.approx(1e-6, rel=1e-3)
    assert set(agreement["compared"]) == {"num_samples", *redshift_metrics(predicted, true)}


@pytest.mark.parametrize(("scale", "samples_delta", "worst"), [(1 + 1e-3, 0, 1e-3), (1.0, 1, 1 / 500)])
def test_collective_agreement_false(prices, scale, samples_delta, worst):
    predicted, true = labelled()
    collective = collective_from(predicted, true, scale=scale, samples_delta=samples_delta)
    agreement = summarize(facts(), retried_job(), docs(250, 250), predicted, true, collective, prices)["collective"]
    assert agreement["agreed"] is False and agreement["status"] == "disagreed"
    assert agreement["max_relative_difference"] == pytest.approx(worst, rel=1e-2)


def test_collective_without_labels_compares_the_sample_count(prices):
    agreement = summarize(facts(), retried_job(), docs(250, 250), None, None, {"num_samples": 500},
                          prices)["collective"]
    assert agreement["agreed"] is True and list(agreement["compared"]) == ["num_samples"]


def test_summary_is_strict_json_even_when_r2_is_undefined(prices):
    true = np.full(10, 0.1)  # constant labels: R2 is NaN
    predicted = true + 0.01
    collective = collective_from(predicted, true)  # NaN r2 on their side too
    summary = summarize(facts(), retried_job(), docs(5, 5), predicted, true, collective, prices)
    assert summary["accuracy"]["r2"] is None
    assert summary["collective"]["agreed"] is True  # undefined on both sides is agreement
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(render_report(summary, "json")) == json.loads(text)


def test_a_job_with_no_success_is_still_summarised(prices):
    invocations = [inv(0, state="failed", error="Task timed out"), inv(0, attempt=2, state="cancelled")]
    summary = summarize(facts(world_size=1), invocations, [], None, None, None, prices)
    assert summary["rank_duration_s"]["p50"] is None and summary["legacy_cost"]["total"] is None
    assert summary["failed_ranks"] == [{"rank": 0, "attempts": 2, "state": "cancelled", "error": "Task timed out"}]
    json.dumps(summary, allow_nan=False)
    assert "| 25MB | 1 | 2 | 12.50 | - |" in render_table([seed_table_row(summary)], "md")


def test_failed_ranks_and_recovered_attempts(prices):
    invocations = [*retried_job(), inv(2, state="failed", error="Runtime.ExitError"),
                   inv(2, attempt=2, state="failed", error="Runtime.ExitError: again")]
    summary = summarize(facts(world_size=3), invocations, docs(1, 1), None, None, None, prices)
    assert summary["failed_ranks"] == [{"rank": 2, "attempts": 2, "state": "failed",
                                        "error": "Runtime.ExitError: again"}]
    assert [(a["rank"], a["attempt"]) for a in summary["failed_attempts"]] == [(1, 1), (2, 1), (2, 2)]
    report = render_report(summary, "md")
    assert "rank 2 (failed after 2 attempts): Runtime.ExitError: again" in report
    assert "rank 1 attempt 1: MemoryError: out of memory" in report


def test_invalid_invocation_state_is_refused():
    with pytest.raises(ValueError, match="state"):
        inv(0, state="done")


# -- combined data --------------------------------------------------------------------------------
def test_combined_data_is_the_rank_documents_in_rank_order():
    documents = [{"rank": 1, "x": 2}, {"rank": 0, "x": 1}]
    combined = combined_data(documents)
    assert combined == [{"rank": 0, "x": 1}, {"rank": 1, "x": 2}]
    assert combined[0] is documents[1]
    legacy = [{"sample_persec": 2.0}, {"sample_persec": 1.0}]
    assert combined_data(legacy) == legacy
    with pytest.raises(ValueError, match=r"ranks \[0\]"):
        combined_data([{"rank": 0}, {"rank": 0}])


# -- rendering ------------------------------------------------------------------------------------
def test_markdown_table_and_report(prices):
    summary = seed_job(prices)
    table = render_table([seed_table_row(summary)], "md")
    lines = table.splitlines()
    assert lines[0] == ("| Partition | World Size | Requests | Wall time (s) | Mean rank time (s) | Memory "
                        "| Cost ($, estimate) | Legacy cost ($, estimate) | $ per M samples | Samples per vCPU-s |")
    # the seed's own formula gives their $0.24 per million samples; billed at 10,240 MB, 3.6x that
    assert lines[2] == "| 25MB | 517 | 517 | 12.50 | 6.55 | 2.8GB | 0.5645 | 0.1580 | 0.8544 | 32.5 |"
    assert "estimates at us-east-1 list prices of 2026-11 (USD)" in table
    assert "Here the billed cost is 3.6x the legacy formula's." in table  # 0.5645 / 0.1580, not a constant
    report = render_report(summary, "md")
    assert report.startswith("# Job job-1\n")
    assert lines[2] in report
    assert "## Cost (estimate)" in report and "| lambda compute | 0.5644 |" in report
    assert "No labels" in report and "collective summary: not run" in report
    assert "## Failed ranks\n\nNone." in report


def test_csv_table_is_numeric_and_parses(prices):
    rows = [seed_table_row(seed_job(prices)), seed_table_row(summarize(facts(), retried_job(), [], None, None, None,
                                                                         prices))]
    text = render_table(rows, "csv")
    header, first, second = list(csv.reader(io.StringIO(text)))
    assert header[:6] == ["Partition", "World Size", "Requests", "Wall time (s; submission to end)",
                          "Mean rank time (s; the seed table's duration)", "Memory (MB)"]
    assert "estimate at Lambda list prices" in header[6]
    assert "estimate at Lambda list prices" in header[7] and "seed-table formula" in header[7]
    assert first[:6] == ["25MB", "517", "517", "12.5", "6.55", str(2.8 * 1024)]
    assert math.isclose(float(first[6]), 517 * 6.55 * 10 * X86 + 517 * 0.2e-6, rel_tol=1e-6)
    assert second[2] == "3"
    assert render_report(seed_job(prices), "csv") == render_table(rows[:1], "csv")


def test_text_table_aligns_columns(prices):
    text = render_table([seed_table_row(seed_job(prices))], "text")
    header, row = text.splitlines()[:2]
    assert header.startswith("Partition  World Size")
    assert row.split() == ["25MB", "517", "517", "12.50", "6.55", "2.8GB", "0.5645", "0.1580", "0.8544", "32.5"]
    assert row.index("6.55") == header.index("Mean rank time")


def test_unknown_formats_are_refused(prices):
    with pytest.raises(ValueError, match="fmt"):
        render_table([], "html")
    with pytest.raises(ValueError, match="fmt"):
        render_report(seed_job(prices), "text")


@pytest.mark.integration
def test_the_coordinator_imports_neither_torch_nor_the_worker():
    code = ("import sys, services.coordinator.summary, services.coordinator.report, services.coordinator.plots\n"
            "import services.coordinator.pricing\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('services.worker.')\n"
            "       and m != 'services.accuracy' or m == 'matplotlib.pyplot']\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_small_costs_keep_four_significant_digits(prices):
    row = seed_table_row(summarize(facts(), retried_job(), [], None, None, None, prices))
    # $0.000500001 compute + $0.0000006 requests + $0.000024 S3; legacy 3 x 0.925 s x 2 GB x price
    assert "| 25MB | 2 | 3 | 12.50 | 0.93 | 2.0GB | 0.0005246 | 0.00009250 |" in render_table([row], "md")
