"""The planner: its inputs checked (422 naming what to fix), its model by hand, its choice, and its route."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from services.coordinator.calibration import SCHEMA, Calibration, load_calibration, parse, save_calibration
from services.coordinator.errors import CalibrationError
from services.coordinator.planner import PlanRequest, plan, predict, rank_duration
from services.coordinator.pricing import load_prices
from services.coordinator.report import render_plan

#: Round numbers, so that every prediction can be checked by hand.
CAL = Calibration(schema=SCHEMA, measured_on="a test", command="none", note="round numbers", memory_mb=1769,
                  samples_per_vcpu_s=100.0, init_vcpu_s=2.0, load_vcpu_s=1.0, download_mb_per_s=50.0, upload_s=0.1,
                  job_overhead_s=0.5, parallel_efficiency=0.5, peak_memory_mb=800.0, peak_partition_mb=25.0,
                  memory_per_partition_mb=1.0)


@pytest.fixture(scope="module")
def prices():
    return load_prices()


def test_rank_duration_by_hand() -> None:
    """25MB (1,278 samples) at one vCPU: compute 12.78 s, download 0.5 s; the second overlaps its download."""
    assert rank_duration(1, 25, 1769, CAL) == pytest.approx(1.0 + 0.5 + 12.78 + 0.1)
    assert rank_duration(2, 25, 1769, CAL) == pytest.approx(1.0 + 0.5 + 12.78 * 2 + 0.1)
    # half a vCPU: compute and load take twice as long; two vCPUs: compute at 1 + 0.5 effective vCPUs
    assert rank_duration(1, 25, 884.5, CAL) == pytest.approx(2.0 + 0.5 + 25.56 + 0.1)
    assert rank_duration(1, 25, 3538, CAL) == pytest.approx(1.0 + 0.5 + 12.78 / (1 + 1.044 * 0.5) + 0.1, rel=1e-3)


def test_prediction_row(prices) -> None:
    request = PlanRequest(partition_mb=25, partitions=3, deadline_s=29)
    row = predict(request, 1769, 2, CAL, prices)
    one, two = rank_duration(1, 25, 1769, CAL), rank_duration(2, 25, 1769, CAL)
    assert row["duration_s"] == pytest.approx((one + two) / 2)
    assert row["wall_s"] == pytest.approx(2.0 + two + 0.5)  # init + slowest rank + overhead
    billed_gb_s = (2.0 + one + 2.0 + two) * 1769 / 1024
    assert row["cost_usd"] == pytest.approx(billed_gb_s * prices.gb_second() + 2 * 0.2e-6
                                            + (5 * 0.0004 + 7 * 0.005) / 1000, rel=1e-3)
    assert row["usd_per_million_samples"] == pytest.approx(row["cost_usd"] / (3 * 1278) * 1e6)
    assert row["partitions_per_rank"] == 2 and row["meets"] is False  # 27.16 s + init + overhead > 29 s
    assert row["fits"] is True and predict(request, 512, 2, CAL, prices)["fits"] is False


def test_plan_marks_the_cheapest_that_meets_the_deadline(prices) -> None:
    made = plan(PlanRequest(partition_mb=25, partitions=8, deadline_s=40, memory_mb=[884, 1769, 3538]), CAL, prices)
    meeting = [row for row in made["rows"] if row["meets"] and row["fits"]]
    assert made["chosen"] == min(meeting, key=lambda row: row["cost_usd"])
    assert sum(row["chosen"] for row in made["rows"]) == 1
    assert made["chosen"]["wall_s"] <= 40 and len(made["rows"]) == 3 * 4  # world sizes 1 2 4 8
    text = render_plan(made)
    assert "| * |" in text and "Chosen (*):" in text and "Assumptions:" in text and "one vCPU" in text


def test_with_a_budget_the_fastest_within_it_and_nothing_when_nothing_fits(prices) -> None:
    made = plan(PlanRequest(partition_mb=25, partitions=8, budget_usd=0.01), CAL, prices)
    within = [row for row in made["rows"] if row["cost_usd"] <= 0.01 and row["fits"]]
    assert made["chosen"] == min(within, key=lambda row: row["wall_s"])
    none = plan(PlanRequest(partition_mb=25, partitions=8, deadline_s=1), CAL, prices)
    assert none["chosen"] is None and "No configuration meets the goal" in render_plan(none)


@pytest.mark.parametrize(("body", "message"), [
    ({"partition_mb": 25, "partitions": 4}, "exactly one of deadline_s"),
    ({"partition_mb": 25, "partitions": 4, "deadline_s": 10, "budget_usd": 1}, "exactly one of deadline_s"),
    ({"partition_mb": 25, "partitions": 4, "deadline_s": 10, "memory_mb": [64]}, "within 128..10240 MB"),
    ({"partition_mb": 25, "partitions": 4, "deadline_s": 10, "world_sizes": [8]}, "must not exceed partitions"),
    ({"partition_mb": 0, "partitions": 4, "deadline_s": 10}, "greater than 0"),
    ({"partition_mb": 25, "partitions": 4, "deadline_s": -1}, "greater than 0"),
    ({"partition_mb": 25, "partitions": 4, "deadline_s": 10, "colour": "red"}, "Extra inputs"),
    ({"partition_mb": 25, "partitions": 100, "deadline_s": 10, "memory_mb": list(range(128, 148)),
      "world_sizes": list(range(1, 41))}, "configurations, over 400"),
])
def test_bad_requests_say_what_to_fix(body, message) -> None:
    with pytest.raises(ValidationError, match=message):
        PlanRequest(**body)


def test_calibration_file_is_checked_field_by_field(tmp_path: Path) -> None:
    assert load_calibration().schema == SCHEMA  # the committed one reads
    path = save_calibration(CAL, tmp_path / "c.json")
    assert load_calibration(path) == CAL
    raw = json.loads(path.read_text())
    for change, field in (({"samples_per_vcpu_s": 0}, "samples_per_vcpu_s"), ({"speed": 1}, "speed"),
                          ({"parallel_efficiency": 1.5}, "parallel_efficiency"), ({"note": ""}, "note")):
        with pytest.raises(CalibrationError) as caught:
            parse({**raw, **change}, path)
        assert caught.value.field == field


def _post(app, path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
    """One request straight through the ASGI app, in process (no server, no HTTP client package)."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "path": path,
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "", "scheme": "http",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    sent: list[dict] = []
    payload = json.dumps(body).encode()

    async def receive() -> dict:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_route_answers_plans_and_422s(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.coordinator.app import create_app

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    stub = SimpleNamespace(settings=SimpleNamespace(api_token="", max_body_bytes=1 << 20, state_bucket="b"))
    app = create_app(stub)  # type: ignore[arg-type]
    status, _, body = _post(app, "/plans", {"partition_mb": 25, "partitions": 517, "deadline_s": 60})
    assert status == 200 and json.loads(body)["schema"] == "cosmic.plan/1"
    assert {row["memory_mb"] for row in json.loads(body)["rows"]} == {884, 1769, 3538, 5307, 10240}
    status, headers, body = _post(app, "/plans?format=md", {"partition_mb": 25, "partitions": 517, "budget_usd": 1})
    assert status == 200 and headers["content-type"].startswith("text/markdown") and b"| * |" in body
    status, _, body = _post(app, "/plans", {"partition_mb": 25, "partitions": 4})
    assert status == 422 and b"exactly one of deadline_s" in body


def test_cosmic_plan_sends_the_dataset_and_the_goal(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main
    from services.client.api import ApiClient

    sent = []
    monkeypatch.setattr(ApiClient, "plan", lambda self, body, fmt: sent.append((body, fmt)) or "| * | table |\n")
    assert main(["plan", "--partition-mb", "25", "--partitions", "517", "--deadline", "60",
                 "--memory-mb", "1769", "3538"]) == 0
    assert sent == [({"partition_mb": 25.0, "partitions": 517, "architecture": "x86_64", "deadline_s": 60.0,
                      "memory_mb": [1769, 3538]}, "md")]
    assert "| * | table |" in capsys.readouterr().out
    assert main(["plan", "--partition-mb", "0", "--partitions", "4", "--budget", "1"]) == 2
    assert "--partition-mb must be above 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a deadline or a budget, not both
        main(["plan", "--partition-mb", "25", "--partitions", "4", "--budget", "1", "--deadline", "5"])
