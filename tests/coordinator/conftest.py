"""The coordinator against real servers on loopback: moto's S3, the local Lambda runtime running the
real worker handler, the rendezvous server; the coordinator itself as a child process."""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from services.local.processes import Child, python, start
from services.ports import free_port
from tests.common import REPO, http_ok, seed_bucket
from tests.processes import rendezvous_process, runtime_process

if TYPE_CHECKING:
    from services.s3store import S3Store

PARTITIONS = 6
SANDBOXES = 4


@dataclass
class Servers:
    """Endpoints of the servers a coordinator needs, and the seeded bucket (the ``stack`` fixture).

    Not :class:`services.local.stack.Stack`: these are the tests' own servers, sharing the session's
    S3 server and running the flaky test handler, started and stopped with the tests."""

    s3: str
    lambda_endpoint: str
    rendezvous: str
    bucket: str
    store: S3Store

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL_LAMBDA": self.lambda_endpoint,
                "COSMIC_RENDEZVOUS_ENDPOINT": self.rendezvous, "COSMIC_STATE_BUCKET": self.bucket,
                "COSMIC_WORKER_TIMEOUT": "120", **extra}

    def payload(self, **fields: Any) -> dict[str, Any]:
        """The users' legacy payload, pointed at the seeded bucket."""
        return {"bucket": self.bucket, "file_limit": "3", "batch_size": 32, "object_type": "folder",
                "S3_object_name": "Anomaly Detection", "script": "/tmp/Anomaly Detection/Inference/inference.py",
                "result_path": f"results/{secrets.token_hex(4)}", "data_bucket": self.bucket, "data_prefix": "tiny",
                **fields}

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.store.keys(self.bucket, prefix))


@pytest.fixture(scope="session")
def stack(e2e: None, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """moto's S3 seeded with tiny partitions, the local runtime running the real worker (through a
    handler that fails on request), and the rendezvous server: what a coordinator talks to."""
    torch = pytest.importorskip("torch")  # the workers in the runtime's sandboxes; never the coordinator
    pytest.importorskip("awslambdaric")
    from services.s3store import S3Store
    from services.worker.model import RedshiftModel

    folder = tmp_path_factory.mktemp("coordinator-stack")
    store = S3Store()
    torch.manual_seed(5)
    bucket, _, _ = seed_bucket(store, "cosmic-coord-", PARTITIONS, RedshiftModel())
    runtime_options = ["--sandboxes", str(SANDBOXES), "--timeout", "120", "--handler",
                       "tests.coordinator.flaky_handler.handler"]
    with runtime_process(folder / "runtime.log", *runtime_options,
                         env={"COSMIC_WORKER_SCRATCH_DIR": str(folder / "scratch")}) as lambda_endpoint, \
            rendezvous_process(folder / "rendezvous.log") as rendezvous:
        yield Servers(s3_endpoint, lambda_endpoint, rendezvous, bucket, store)


@dataclass
class Api:
    """A coordinator child process and a small JSON client for it."""

    url: str
    child: Child
    log: Path
    token: str = ""

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, content, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, content, kind = error.code, error.read(), error.headers.get("Content-Type", "")
        return status, (json.loads(content) if "json" in kind else content)

    def submit(self, payload: dict[str, Any], **headers: str) -> str:
        status, body = self.call("POST", "/jobs", payload, headers=headers)
        assert status == 202, body
        return str(body["job_id"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        from services.coordinator.state import TERMINAL

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.call("GET", f"/jobs/{job_id}")
            assert status == 200, body
            if body["state"] in TERMINAL:
                return body
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.child.kill()

    def wait_for_ranks(self, job_id: str, succeeded: int, timeout: float = 60) -> None:
        """Until ``succeeded`` ranks of the job have: a point mid-job to break something at."""
        deadline = time.monotonic() + timeout
        while self.call("GET", f"/jobs/{job_id}")[1]["ranks_by_state"].get("succeeded", 0) < succeeded:
            assert time.monotonic() < deadline, f"job {job_id} did not reach {succeeded} finished ranks"
            time.sleep(0.05)


@pytest.fixture
def start_coordinator(stack: Servers, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    pytest.importorskip("fastapi")
    started: list[Api] = []

    def start_api(token: str = "", **env: str) -> Api:
        port = free_port()
        log = tmp_path / f"coordinator-{len(started)}.log"
        extra = {"COSMIC_API_TOKEN": token, **env}
        child = start(python("services.coordinator", "--port", str(port)), name="the coordinator", log=log,
                      env=stack.env(**extra), cwd=REPO, stop_timeout=15)
        api = Api(f"http://127.0.0.1:{port}", child, log, token)
        started.append(api)
        child.wait_ready(lambda: http_ok(api.url + "/healthz"), 30)
        return api

    yield start_api
    for api in started:
        api.child.stop()


@pytest.fixture
def api(start_coordinator: Callable[..., Api]) -> Api:
    return start_coordinator()
