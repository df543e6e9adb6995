"""``GET /jobs/{id}/ranks/{rank}/logs``: each attempt's log tail as Lambda returned it (``cosmic logs``)."""

from __future__ import annotations

from tests.common import Api, Servers


def test_each_attempt_keeps_its_log_tail(api: Api, stack: Servers) -> None:
    job_id = api.submit(stack.payload(world_size=2, file_limit="2"))
    assert api.wait(job_id)["state"] == "succeeded"
    status, answer = api.call("GET", f"/jobs/{job_id}/ranks/1/logs")
    assert status == 200 and answer["rank"] == 1 and answer["state"] == "succeeded", answer
    (attempt,) = answer["attempts"]
    assert attempt["attempt"] == 1 and attempt["state"] == "succeeded"
    tail = attempt["log_tail"]
    assert "REPORT RequestId" in tail and "invocation_done" in tail, tail[-800:]
    assert len(tail.encode()) <= 4096
    status, body = api.call("GET", f"/jobs/{job_id}/ranks/2/logs")
    assert status == 404 and "has ranks 0 to 1, not 2" in body["detail"], body
    status, body = api.call("GET", "/jobs/j-nope/ranks/0/logs")
    assert status == 404 and "no such job" in body["detail"], body


def test_cosmic_logs_shows_a_failed_attempts_tail(api: Api, stack: Servers, monkeypatch, capsys) -> None:
    from services import cli

    job_id = api.submit(stack.payload(result_path="results/flaky-logs", world_size=2, file_limit="2"))
    assert api.wait(job_id)["state"] == "succeeded"
    monkeypatch.setenv("COSMIC_COORDINATOR_URL", api.url)
    monkeypatch.setenv("COSMIC_COORDINATOR_API_TOKEN", api.token)
    assert cli.main(["logs", job_id, "1", "--attempt", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"== job {job_id} rank 1 attempt 1: failed (RuntimeError: transient failure injected")
    assert "REPORT RequestId" in out
    assert cli.main(["logs", job_id, "1"]) == 0
    assert f"== job {job_id} rank 1 attempt 2: succeeded" in capsys.readouterr().out
    assert cli.main(["retry", job_id]) == 1  # a succeeded job has nothing to retry: the API's 409, one line
    assert "HTTP 409: only a failed job can be retried" in capsys.readouterr().err
