"""The embedded stack (start, reattach, survive its starter, replace, stop), the API client's errors,
and ``cosmic status`` without a coordinator.

The stack's runtime runs the trivial test handler, not the worker: what is tested here is the
processes' lifecycle, and the real handler would only make each start slower.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from services import cli
from services.client.api import HINT, ApiClient, ApiError, CoordinatorUnreachable, Progress
from services.local import seeding
from services.local import stack as embedded
from services.local.processes import alive
from services.ports import free_port
from tests.common import REPO

STACK_TIMEOUT = 90


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated cache folder (so the stack record is this test's own) and a light handler."""
    pytest.importorskip("moto")  # the stack's S3
    pytest.importorskip("awslambdaric")  # the stack's Lambda runtime
    monkeypatch.setenv("COSMIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("COSMIC_WORKER_HANDLER", "tests.worker.handlers.dispatch")
    monkeypatch.delenv("COSMIC_SANDBOXES", raising=False)
    yield tmp_path
    leftover = embedded.running_stack()
    if leftover is not None:  # a failed test must not leave processes behind
        leftover.stop()


def _gone(pids: tuple[int, ...], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _invoke(stack: embedded.Stack) -> dict[str, Any]:
    import boto3

    client = boto3.client("lambda", endpoint_url=stack.lambda_endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    try:
        answer = client.invoke(FunctionName=embedded.WORKER_FUNCTION, Payload=json.dumps({"value": 7}).encode())
        return dict(json.loads(answer["Payload"].read()))
    finally:
        client.close()


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_ensure_stack_starts_reattaches_seeds_and_stops(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = embedded.ensure_stack(sandboxes=1)
    try:
        assert not stack.reattached and stack.sandboxes == 1
        assert all(service.alive() and service.answers() for service in stack.services)
        assert json.loads((cache / "embedded" / "stack.json").read_text())["runtime"]["pid"] == stack.runtime.pid
        assert _invoke(stack)["value"] == 7  # the runtime serves the Invoke API
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.rendezvous.health_port}/healthz", timeout=5) as r:
            assert r.status == 200

        again = embedded.ensure_stack()
        assert again.reattached and again.pids == stack.pids

        environ: dict[str, str] = {"AWS_REGION": "eu-west-1"}
        stack.export(environ)
        assert environ["AWS_ENDPOINT_URL_S3"] == stack.s3_endpoint
        assert environ["AWS_ENDPOINT_URL_LAMBDA"] == stack.lambda_endpoint
        assert environ["COSMIC_COORDINATOR_RENDEZVOUS_ENDPOINT"] == stack.rendezvous_endpoint
        assert environ["COSMIC_COORDINATOR_STATE_BUCKET"] == "cosmicai-data" and environ["AWS_REGION"] == "eu-west-1"
        assert environ["AWS_ACCESS_KEY_ID"] == "cosmic-local" and environ["AWS_DEFAULT_REGION"] == "us-east-1"

        _check_seed(stack, cache, monkeypatch)
    finally:
        stack.stop()
    assert _gone(stack.pids), "stop() left a service running"
    assert not (cache / "embedded" / "stack.json").exists()
    assert embedded.running_stack() is None


def _check_seed(stack: embedded.Stack, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """seed() uploads the assets where the example payload looks, and skips what is already there."""
    files = {"checkpoint": cache / "demo.pt", "1": cache / "1.pt", "2": cache / "2.pt"}
    for name, path in files.items():
        path.write_bytes(name.encode() * 100)
    assets = {"checkpoint": str(files["checkpoint"]), "partitions": {"tiny": [str(files["1"]), str(files["2"])]}}
    monkeypatch.setattr(seeding, "_make_assets", lambda sizes, count: assets)
    first = seeding.seed(stack, sizes=("tiny",), count=2)
    assert first.uploaded == 3 and first.partitions == {"tiny": ["tiny/1.pt", "tiny/2.pt"]}
    assert first.checkpoint_key == "Anomaly Detection/Fine_Tune_Model/demo.pt"
    client = seeding._s3_client(stack)
    try:
        listed = {item["Key"]: item["Size"] for item in client.list_objects_v2(Bucket="cosmicai-data")["Contents"]}
    finally:
        client.close()
    assert listed == {"Anomaly Detection/Fine_Tune_Model/demo.pt": 1000, "tiny/1.pt": 100, "tiny/2.pt": 100}
    assert seeding.seed(stack, sizes=("tiny",), count=2).uploaded == 0
    files["2"].write_bytes(b"changed, so uploaded again")
    assert seeding.seed(stack, sizes=("tiny",), count=2).uploaded == 1


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_the_stack_survives_its_starter_and_a_dead_one_is_replaced(cache: Path) -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", "import json, time\nfrom services.local.stack import ensure_stack\n"
                               "print(json.dumps(ensure_stack(sandboxes=1).pids), flush=True)\ntime.sleep(300)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=os.environ.copy(), start_new_session=True)
    try:
        pids = tuple(json.loads(starter.stdout.readline()))  # type: ignore[union-attr]
    finally:
        os.killpg(starter.pid, signal.SIGKILL)  # a crash with its process group (Ctrl-C, a closed terminal)
        starter.wait()
        starter.stdout.close()  # type: ignore[union-attr]
    assert len(pids) == 3
    time.sleep(0.5)
    assert all(alive(pid) for pid in pids), "a service died with the process that started it"

    stack = embedded.ensure_stack()
    try:
        assert stack.reattached and stack.pids == pids
        assert _invoke(stack)["value"] == 7

        os.killpg(stack.rendezvous.pid, signal.SIGKILL)  # one service dies: the stack is not whole
        assert _gone((stack.rendezvous.pid,))
        replaced = embedded.ensure_stack()
        assert not replaced.reattached and set(replaced.pids).isdisjoint(pids)
        assert _gone(pids), "the leftovers of the broken stack were not stopped"
    finally:
        (embedded.running_stack() or stack).stop()


def test_an_unreachable_coordinator_says_how_to_start_one() -> None:
    client = ApiClient(f"http://127.0.0.1:{free_port()}", token="")
    with pytest.raises(CoordinatorUnreachable, match="is the coordinator running") as caught:
        client.status("j1")
    assert HINT in str(caught.value) and "cosmic serve --embedded" in str(caught.value)


class _Api(http.server.BaseHTTPRequestHandler):
    """Answers from ``routes``: path -> list of (status, body), the last one repeated."""

    routes: ClassVar[dict[str, list[tuple[int, Any]]]] = {}
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        answers = self.routes.get(self.path) or [(404, {"detail": f"no such job or object: {self.path}"})]
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(integration: None) -> Iterator[str]:
    _Api.routes, _Api.seen = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_api_errors_carry_the_detail(api: str) -> None:
    _Api.routes["/jobs/j1/report?format=json"] = [(422, {"detail": [
        {"loc": ["body", "file_limit"], "msg": "must be at least 1", "type": "value_error"}]})]
    client = ApiClient(api, token="secret")
    with pytest.raises(ApiError, match=r"HTTP 404: no such job or object: /jobs/nope") as caught:
        client.status("nope")
    assert caught.value.status == 404 and not isinstance(caught.value, CoordinatorUnreachable)
    with pytest.raises(ApiError, match=r"HTTP 422: file_limit: must be at least 1"):
        client.report("j1", "json")
    assert _Api.seen[0]["Authorization"] == "Bearer secret"


def test_wait_follows_the_job_and_prints_progress_lines_off_a_terminal(api: str) -> None:
    def status(state: str, done: int) -> tuple[int, dict[str, Any]]:
        return 200, {"job_id": "j1", "state": state, "world_size": 4, "ranks_by_state": {"succeeded": done}}

    _Api.routes["/jobs/j1"] = [status("queued", 0), status("running", 2), status("succeeded", 4)]
    out = io.StringIO()
    final = ApiClient(api, token="").wait("j1", interval=0.01, stream=out)
    assert final["state"] == "succeeded"
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3  # one line per change of state, no redraws
    assert "0/4 ranks done" in lines[0] and "2/4 ranks done  running" in lines[1]
    assert lines[2].startswith("job j1 [" + "#" * Progress.width + "] 4/4 ranks done  succeeded")


def test_cosmic_status_without_a_coordinator_fails_with_the_hint(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COSMIC_COORDINATOR_URL", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["status"]) == 1
    captured = capsys.readouterr()
    assert "cosmic status: cannot reach the coordinator" in captured.err and HINT in captured.err
    assert captured.out == ""


@pytest.mark.integration
def test_the_coordinator_side_never_imports_torch() -> None:
    modules = ["services.local.stack", "services.local.seeding", "services.client.api", "services.client.commands",
               "services.client.submit", "services.client.status", "services.client.report",
               "services.client.sweep", "services.coordinator.cli", "services.client.demo",
               "services.coordinator.summary", "services.coordinator.report", "services.coordinator.plots"]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
