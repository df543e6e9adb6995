"""The embedded stack (start, reattach, survive its starter, replace, stop), the API client's errors,
and ``cosmic status`` without a coordinator.

The stack's runtime runs the trivial test handler, not the worker: what is tested here is the
processes' lifecycle, and the real handler would only make each start slower.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
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
    for suffix in (".onnx", ".onnx.json"):  # the checkpoint's export goes beside it
        files["checkpoint"].with_name("demo.pt" + suffix).write_bytes(b"export")
    assert seeding.seed(stack, sizes=("tiny",), count=2).uploaded == 2


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


# -- one stack per cache folder, shared, resized in place, its S3 kept across stops ------------------
def _put(stack: embedded.Stack, bucket: str, objects: dict[str, bytes], **extra: Any) -> None:
    client = seeding._s3_client(stack)
    try:
        client.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    finally:
        client.close()


def _contents(stack: embedded.Stack) -> dict[tuple[str, str], bytes]:
    """Every object of the stack's S3: (bucket, key) -> bytes."""
    client = seeding._s3_client(stack)
    try:
        found = {}
        for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    found[bucket, item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found
    finally:
        client.close()


def _record(cache: Path) -> dict[str, Any]:
    return dict(json.loads((cache / "embedded" / "stack.json").read_text()))


def _cosmic(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COSMIC_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120)


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_another_sandbox_count_restarts_the_runtime_alone_and_keeps_s3(cache: Path) -> None:
    stack = embedded.ensure_stack(sandboxes=1)
    try:
        _put(stack, "kept", {"jobs/j1/manifest.json": b'{"state": "running"}', "25MB/1.pt": os.urandom(100_000)})
        before = _contents(stack)

        resized = embedded.ensure_stack(sandboxes=2)
        assert resized.reattached and resized.sandboxes == 2
        assert (resized.s3.pid, resized.s3.port) == (stack.s3.pid, stack.s3.port), "S3 was restarted"
        assert (resized.rendezvous.pid, resized.rendezvous.port) == (stack.rendezvous.pid, stack.rendezvous.port)
        assert resized.runtime.pid != stack.runtime.pid and _gone((stack.runtime.pid,))
        assert resized.runtime.port == stack.runtime.port, "a coordinator's Lambda endpoint would be stale"
        assert _record(cache)["sandboxes"] == 2 and _record(cache)["runtime"]["pid"] == resized.runtime.pid
        assert _contents(resized) == before
        assert _invoke(resized)["value"] == 7
        assert embedded.ensure_stack().pids == resized.pids  # no count asked: the stack as it is

        smaller = embedded.ensure_stack(memory_mb=884)  # another memory size (so CPU share): the runtime alone
        assert (smaller.memory_mb, smaller.sandboxes, smaller.s3.pid) == (884, 2, stack.s3.pid)
        assert smaller.runtime.pid != resized.runtime.pid and _record(cache)["memory_mb"] == 884
        assert _invoke(smaller)["memory"] == "884"
        with pytest.raises(embedded.EmbeddedError, match=r"memory_mb must be within 128\.\.10240"):
            embedded.ensure_stack(memory_mb=20_000)
    finally:
        (embedded.running_stack() or stack).stop()


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_a_second_command_attaches_and_never_stops_the_stack(cache: Path) -> None:
    serve = subprocess.Popen(  # a stand-in for `cosmic serve --embedded`: it uses the stack until it exits
        [sys.executable, "-c", "import json, time\nfrom services.local.stack import ensure_stack\n"
                               "print(json.dumps(ensure_stack(sandboxes=1, user='cosmic serve').pids), flush=True)\n"
                               "time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=os.environ.copy(), start_new_session=True)
    try:
        pids = tuple(json.loads(serve.stdout.readline() or "null") or ())  # type: ignore[union-attr]
        assert len(pids) == 3, "the stand-in for `cosmic serve` did not start a stack"

        attached = embedded.ensure_stack(at_least=1)  # what `cosmic demo` does beside it
        assert attached.reattached and attached.pids == pids
        with pytest.raises(embedded.EmbeddedError, match=rf"pid {serve.pid} \(cosmic serve\) uses it"):
            embedded.ensure_stack(sandboxes=2)
        with pytest.raises(embedded.EmbeddedError, match="already runs"):
            embedded.ensure_stack(fresh=True)
        assert not embedded.release(attached), "a command that did not start the stack stopped it"
        refused = _cosmic(cache, "stop")
        assert refused.returncode == 1 and f"pid {serve.pid} (cosmic serve)" in refused.stderr
        assert all(alive(pid) for pid in pids) and embedded.running_stack() is not None
        assert embedded.running_stack().pids == pids  # type: ignore[union-attr]
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()
        serve.stdout.close()  # type: ignore[union-attr]
    stack = embedded.ensure_stack(sandboxes=2)  # its user is gone: now it may be resized
    try:
        assert stack.sandboxes == 2 and stack.s3.pid == pids[0]
    finally:
        stack.stop()


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_what_s3_holds_survives_a_stop_and_a_start(cache: Path) -> None:
    import boto3.s3.transfer

    stack = embedded.ensure_stack(sandboxes=1)
    big = os.urandom(12 * 1024 * 1024)
    try:
        _put(stack, "cosmicai-data", {"Anomaly Detection/Fine_Tune_Model/demo.pt": b"weights", "empty": b"",
                                      "odd/../naïve key with spaces?.json": b"{}"})
        _put(stack, "results", {"summary.json": b'{"ok": 1}'}, ContentType="application/json",
             Metadata={"job": "j1"})
        client = stack.s3_client()
        try:  # a multipart upload, as seeding makes them: its ETag is not an MD5
            client.upload_fileobj(io.BytesIO(big), "results", "25MB/1.pt",
                                  Config=boto3.s3.transfer.TransferConfig(multipart_threshold=5 * 1024 * 1024))
        finally:
            client.close()
        before = _contents(stack)
    finally:
        stopped = stack.stop()
    assert _gone(stack.pids) and stopped.saved is not None and stopped.saved.objects == 5, stopped.error

    again = embedded.ensure_stack(sandboxes=1)
    try:
        assert not again.reattached and set(again.pids).isdisjoint(stack.pids)
        after = _contents(again)
        assert after.keys() == before.keys() and after == before
        client = again.s3_client()
        try:
            head = client.head_object(Bucket="results", Key="summary.json")
        finally:
            client.close()
        assert head["ContentType"] == "application/json" and head["Metadata"] == {"job": "j1"}
    finally:
        second = again.stop()
    assert second.saved is not None and second.saved.moved == 0, "an unchanged S3 was downloaded again"


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_cosmic_stop_stops_the_three_processes_and_says_so(cache: Path) -> None:
    helped = _cosmic(cache, "stop", "--help")
    assert helped.returncode == 0 and "embedded stack" in helped.stdout and "s3-snapshot" in helped.stdout
    stack = embedded.ensure_stack(sandboxes=1)
    _put(stack, "cosmicai-data", {"a": b"1"})
    done = _cosmic(cache, "stop")
    assert done.returncode == 0, done.stderr
    assert "stopped the embedded stack" in done.stdout and "S3 saved: 1 objects" in done.stdout
    assert all(f"pid {pid}" in done.stdout for pid in stack.pids)
    assert _gone(stack.pids), "cosmic stop left a service running"
    assert not (cache / "embedded" / "stack.json").exists() and embedded.running_stack() is None
    again = _cosmic(cache, "stop")
    assert again.returncode == 0 and "nothing to stop" in again.stdout


@pytest.mark.e2e
@pytest.mark.timeout(STACK_TIMEOUT)
def test_an_unreadable_snapshot_is_set_aside_and_the_stack_still_starts(cache: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = cache / "embedded" / "s3-snapshot"
    (folder / "objects").mkdir(parents=True)
    (folder / "objects" / "f1").write_bytes(b"data")
    (folder / "manifest.json").write_text('{"version": 1, "buckets": {"b": {"k": {"file": "f1"')  # cut short
    with caplog.at_level(logging.ERROR, logger="cosmic.coordinator.embedded"):
        stack = embedded.ensure_stack(sandboxes=1)
    try:
        assert stack.alive() and _contents(stack) == {}
        lines = [r for r in caplog.records if r.getMessage() == "embedded_snapshot_unreadable"]
        assert len(lines) == 1, caplog.text
        aside = Path(lines[0].fields["moved_to"])  # type: ignore[attr-defined]
        assert "manifest.json" in lines[0].fields["error"]  # type: ignore[attr-defined]
        assert (aside / "objects" / "f1").read_bytes() == b"data", "the unreadable snapshot's files were lost"
    finally:
        stack.stop()


@pytest.mark.integration
def test_a_restore_skips_an_object_whose_file_is_missing_or_cut_short(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("moto")
    from services.local import snapshot
    from services.local.s3server import S3Server
    from services.s3store import s3_client

    with S3Server(log_path=tmp_path / "s3.log") as server:
        client = s3_client(server.endpoint, "us-east-1", "x", "x")
        try:
            client.create_bucket(Bucket="bkt")
            for key in ("kept", "lost", "short"):
                client.put_object(Bucket="bkt", Key=key, Body=key.encode() * 10)
            taken = snapshot.take(client, tmp_path / "snap")
            assert (taken.objects, taken.moved) == (3, 3)
            entries = json.loads((tmp_path / "snap" / "manifest.json").read_text())["buckets"]["bkt"]
            (tmp_path / "snap" / "objects" / entries["lost"]["file"]).unlink()
            (tmp_path / "snap" / "objects" / entries["short"]["file"]).write_bytes(b"sh")
            for key in ("kept", "lost", "short"):
                client.delete_object(Bucket="bkt", Key=key)
            with caplog.at_level(logging.ERROR, logger="cosmic.coordinator.embedded"):
                restored = snapshot.restore(client, tmp_path / "snap")
            assert restored is not None and (restored.objects, restored.skipped) == (1, 2)
            assert [item["Key"] for item in client.list_objects_v2(Bucket="bkt")["Contents"]] == ["kept"]
            skipped = {r.fields["key"] for r in caplog.records  # type: ignore[attr-defined]
                       if r.getMessage() == "embedded_snapshot_object_skipped"}
            assert skipped == {"lost", "short"}
        finally:
            client.close()
