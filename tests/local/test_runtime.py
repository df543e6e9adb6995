"""The local Lambda runtime through boto3's own Lambda client, against a trivial handler."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("awslambdaric")
from botocore.config import Config  # noqa: E402

from services.ports import free_port  # noqa: E402
from tests.common import REPO, lambda_client  # noqa: E402
from tests.processes import runtime_process  # noqa: E402

pytestmark = pytest.mark.integration  # the runtime, and the runtime's command line

TIMEOUT_S = 2


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A runtime process with 2 sandboxes and a 2 s function timeout; yields its endpoint URL."""
    log = tmp_path_factory.mktemp("runtime") / "runtime.log"
    with runtime_process(log, "--sandboxes", "2", "--timeout", str(TIMEOUT_S), "--handler",
                         "tests.worker.handlers.dispatch", "--memory-mb", "2048") as endpoint:
        yield endpoint


def invoke(endpoint: str, payload: dict[str, Any], name: str = "cosmic-worker", **kwargs: Any) -> tuple[dict, Any]:
    response = lambda_client(endpoint).invoke(FunctionName=name, Payload=json.dumps(payload), **kwargs)
    return response, json.loads(response["Payload"].read() or b"null")


@pytest.mark.parametrize("name", ["cosmic-worker", "function",
                                  "arn:aws:lambda:us-east-1:000000000000:function:cosmic-worker:$LATEST"])
def test_request_response_under_every_name(runtime: str, name: str) -> None:
    response, body = invoke(runtime, {"value": 7}, name=name)
    assert response["StatusCode"] == 200 and "FunctionError" not in response
    assert body["value"] == 7 and body["function"] == "cosmic-worker" and body["memory"] == "2048"
    assert int(body["threads"]) >= 1, "each sandbox is told its share of the cores"


def test_standard_endpoint_variable_is_enough(runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 reads AWS_ENDPOINT_URL_LAMBDA itself: no endpoint in the code, as the coordinator will do."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", runtime)
    lam = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local",
                       config=Config(retries={"max_attempts": 0}))
    response = lam.invoke(FunctionName="cosmic-worker", Payload=b'{"value": "env"}')
    assert json.loads(response["Payload"].read())["value"] == "env"
    lam.close()


def test_event_invocation_runs_later(runtime: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    response = lambda_client(runtime).invoke(FunctionName="cosmic-worker", InvocationType="Event",
                                             Payload=json.dumps({"action": "touch", "path": str(marker)}))
    assert response["StatusCode"] == 202
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()


def test_warm_sandboxes_are_reused(runtime: str) -> None:
    pids = {invoke(runtime, {"value": i})[1]["pid"] for i in range(6)}
    assert 1 <= len(pids) <= 2


def test_concurrency_limit_answers_429(runtime: str) -> None:
    outcomes: list[str] = []

    def call() -> None:
        try:
            invoke(runtime, {"action": "sleep", "seconds": 1})
            outcomes.append("ok")
        except lambda_client(runtime).exceptions.TooManyRequestsException:
            outcomes.append("429")

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["429", "ok", "ok"]


def test_capacity_is_read_through_the_control_plane_as_on_aws(runtime: str) -> None:
    """The sandbox count is the function's reserved concurrency and the account's limit."""
    api = lambda_client(runtime)
    assert api.get_function_concurrency(FunctionName="cosmic-worker")["ReservedConcurrentExecutions"] == 2
    function = api.get_function(FunctionName="cosmic-worker")
    assert function["Concurrency"]["ReservedConcurrentExecutions"] == 2
    configuration = function["Configuration"]
    assert (configuration["FunctionName"], configuration["MemorySize"], configuration["Timeout"]) == \
        ("cosmic-worker", 2048, TIMEOUT_S)
    assert configuration["FunctionArn"].endswith(":function:cosmic-worker")
    limits = api.get_account_settings()["AccountLimit"]
    assert (limits["ConcurrentExecutions"], limits["UnreservedConcurrentExecutions"]) == (2, 0)
    assert [f["FunctionName"] for f in api.list_functions()["Functions"]] == ["cosmic-worker"]
    with pytest.raises(api.exceptions.ResourceNotFoundException):
        api.get_function_concurrency(FunctionName="no-such-function")


def test_every_answer_carries_a_request_id(runtime: str) -> None:
    api = lambda_client(runtime)
    answers = [api.get_account_settings(), api.invoke(FunctionName="cosmic-worker", Payload=b"{}"),
               api.invoke(FunctionName="cosmic-worker", InvocationType="DryRun")]
    for answer in answers:
        assert answer["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
        if "Payload" in answer:
            answer["Payload"].read()  # an unread body keeps its connection out of the pool, to be collected
    with pytest.raises(api.exceptions.ResourceNotFoundException) as missing:
        api.invoke(FunctionName="nothing", Payload=b"{}")
    assert missing.value.response["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")


def test_handler_error_is_shaped_as_lambda_does(runtime: str) -> None:
    response, body = invoke(runtime, {"action": "raise", "value": "x"})
    assert response["StatusCode"] == 200 and response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "asked to fail: x"
    assert any("handlers.py" in frame for frame in body["stackTrace"])


def test_timeout_replaces_the_sandbox(runtime: str) -> None:
    started = time.monotonic()
    response, body = invoke(runtime, {"action": "sleep", "seconds": TIMEOUT_S + 3})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorMessage"].endswith(f"Task timed out after {TIMEOUT_S:.2f} seconds")
    assert time.monotonic() - started < TIMEOUT_S + 1.5
    for value in range(3):  # both sandboxes, including the replaced one, answer again
        assert invoke(runtime, {"value": value})[1]["value"] == value


def test_handler_that_exits_the_process(runtime: str) -> None:
    response, body = invoke(runtime, {"action": "exit", "code": 3})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in body["errorMessage"]
    assert invoke(runtime, {"value": "after"})[1]["value"] == "after"


def test_log_tail_ends_in_a_report_with_the_real_peak_memory(runtime: str) -> None:
    response, _ = invoke(runtime, {"action": "allocate", "megabytes": 200}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    assert log.splitlines()[0].startswith("START RequestId: ")
    report = log.strip().splitlines()[-1]
    fields = dict(re.findall(r"([A-Za-z ]+): ([\d.]+)", report.split("\t", 1)[1]))
    assert float(fields["Duration"]) > 0 and int(fields["Billed Duration"]) >= float(fields["Duration"])
    assert fields["Memory Size"] == "2048"
    assert 200 <= int(fields["Max Memory Used"]) < 300, report


def test_bad_requests(runtime: str) -> None:
    lam = lambda_client(runtime)
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="not-this-one", Payload=b"{}")
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName="cosmic-worker", Payload=b"{not json")
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName="cosmic-worker", Payload=json.dumps({"blob": "x" * (7 << 20)}))


def test_response_over_six_megabytes_is_refused_as_lambda_does(runtime: str) -> None:
    response, body = invoke(runtime, {"action": "big", "bytes": 7 << 20})
    assert response["FunctionError"] == "Unhandled" and body["errorType"] == "Function.ResponseSizeTooLarge"
    assert invoke(runtime, {"action": "big", "bytes": 5 << 20})[1] == "x" * (5 << 20)


def test_handler_that_cannot_be_imported_fails_the_start_at_once() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.local.runtime", "--port", str(free_port()),
                             "--sandboxes", "1",
                             "--handler", "tests.worker.no_such_module.handler"],
                            capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    assert "failed to initialise: Runtime.ImportModuleError" in result.stderr
    assert time.monotonic() - started < 20, "not after the 60 s init timeout"


def test_bad_setting_is_a_clear_error() -> None:
    result = subprocess.run([sys.executable, "-m", "services.local.runtime"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COSMIC_SANDBOXES": "0"}, cwd=REPO)
    assert result.returncode == 2 and "sandboxes must be at least 1" in result.stderr
