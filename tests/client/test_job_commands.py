"""``cosmic retry``, ``cosmic logs`` and the checks every option gets before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services import cli
from services.client import logs, retry
from services.client.api import ApiClient


class Recorder(ApiClient):
    """The real client with its transport replaced: records each request, answers from ``answers``."""

    sent: list[tuple[str, str]]
    answers: dict[tuple[str, str], Any]

    def __init__(self) -> None:
        super().__init__("http://coordinator.invalid", "")

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
        Recorder.sent.append((method, path))
        return json.dumps(Recorder.answers[(method, path)]).encode()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    Recorder.sent, Recorder.answers = [], {}
    for module in (logs, retry):
        monkeypatch.setattr(module, "ApiClient", Recorder)
    return Recorder


def status(state: str) -> dict[str, Any]:
    return {"job_id": "j1", "state": state, "world_size": 2, "partitions": 2, "function": "f", "result": "s3://b/r",
            "ranks_by_state": {"running": 1, "succeeded": 1}, "submitted_at": 0.0}


def test_retry_posts_to_the_retry_route(api, capsys):
    api.answers[("POST", "/jobs/j1/retry")] = status("running")
    assert cli.main(["retry", "j1"]) == 0
    assert api.sent == [("POST", "/jobs/j1/retry")]
    assert "job j1: running" in capsys.readouterr().out


def attempts() -> dict[str, Any]:
    return {"job_id": "j1", "rank": 1, "state": "succeeded", "attempts": [
        {"attempt": 1, "state": "failed", "error": "MemoryError: out", "log_tail": "START\nboom\nREPORT"},
        {"attempt": 2, "state": "succeeded", "error": None, "log_tail": "START\nfine\nEND\n"}]}


def test_logs_prints_the_latest_attempts_tail(api, capsys):
    api.answers[("GET", "/jobs/j1/ranks/1/logs")] = attempts()
    assert cli.main(["logs", "j1", "1"]) == 0
    out = capsys.readouterr().out
    assert out == "== job j1 rank 1 attempt 2: succeeded\nSTART\nfine\nEND\n"
    assert cli.main(["logs", "j1", "1", "--attempt", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("== job j1 rank 1 attempt 1: failed (MemoryError: out)\nSTART\nboom")
    assert cli.main(["logs", "j1", "1", "--all"]) == 0
    assert capsys.readouterr().out.count("== job j1 rank 1 attempt") == 2


def test_logs_says_why_there_is_no_tail(api, capsys):
    api.answers[("GET", "/jobs/j1/ranks/0/logs")] = {"job_id": "j1", "rank": 0, "state": "running", "attempts": [
        {"attempt": 1, "state": "running", "error": None, "log_tail": None}]}
    assert cli.main(["logs", "j1", "0"]) == 0
    assert "still running" in capsys.readouterr().out
    assert cli.main(["logs", "j1", "0", "--attempt", "3"]) == 2
    assert "has attempts 1 to 1, not 3" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "complaint"), [
    (["status", "--limit", "0"], "--limit: must be from 1 to 1000, got 0"),
    (["status", "--limit", "-1"], "--limit: must be from 1 to 1000, got -1"),
    (["status", "--limit", "ten"], "--limit: 'ten' is not a whole number"),
    (["logs", "j1", "-2"], "rank: must be at least 0, got -2"),
    (["logs", "j1", "0", "--attempt", "0"], "--attempt: must be at least 1, got 0"),
    (["retry", "../etc"], "'../etc' is not a job id"),
    (["cancel", ""], "'' is not a job id"),
    (["report", "j 1"], "'j 1' is not a job id"),
    (["submit", "p.json", "--idempotency-key", "x" * 201], "must be 1 to 200 printable characters"),
    (["demo", "--partitions", "0"], "--partitions: must be at least 1, got 0"),
    (["demo", "--world-sizes", "2", "0"], "--world-sizes: must be at least 1, got 0"),
    (["serve", "--port", "70000"], "--port: must be from 0 to 65535, got 70000"),
    (["serve", "--sandboxes", "0"], "--sandboxes: must be at least 1, got 0"),
    (["serve", "--snapshot-interval", "-1"], "--snapshot-interval: must be 0 or more seconds, got -1"),
    (["sweep", "--file-limit", "0"], "--file-limit: must be at least 1, got 0"),
    (["sweep", "--partition-mb", "25", "-5"], "--partition-mb: must be at least 1, got -5"),
])
def test_every_option_is_checked_before_anything_is_sent(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err
