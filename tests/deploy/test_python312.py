"""The images run Python 3.12 (the Lambda base image and the slim ones); this machine develops on 3.11.

Torch has no 3.12 wheel here, but everything else can be checked under 3.12 without installing
anything: every module compiles, and the standard-library-only parts (the rendezvous server and
client, the worker's event contract, settings) run. Skips when no 3.12 interpreter is found.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.common import REPO

pytestmark = pytest.mark.integration  # every test runs Python 3.12 in a child

SCRIPT = r"""
import json, subprocess, sys, threading, time, urllib.request
assert sys.version_info[:2] == (3, 12), sys.version
from services.contracts import parse_event, legacy_item, WorkerEvent
from services.rendezvous.client import pair

event = WorkerEvent(job_id="j", rank=1, world_size=2, data_bucket="cosmicai-data", partitions=("25MB/1.pt",),
                    result_bucket="cosmicai-data", result_path="result-partition-25MB/1")
assert parse_event(json.loads(json.dumps(event.to_dict()))) == event
assert parse_event(legacy_item(event)).partitions == event.partitions

from services.ports import free_ports
port, health = free_ports(2)
server = subprocess.Popen([sys.executable, "-m", "services.rendezvous", "--host", "127.0.0.1", "--port", str(port),
                           "--health-host", "127.0.0.1", "--health-port", str(health)])
try:
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.05)
    links = {}
    def side(rank):
        links[rank] = pair("py312-check", "127.0.0.1", port, timeout=20)
    threads = [threading.Thread(target=side, args=(rank,)) for rank in (0, 1)]
    for thread in threads: thread.start()
    for thread in threads: thread.join(30)
    links[0].sendall(b"ping")
    assert links[1].recv(4) == b"ping"
    print("paired", links[0].getsockname(), links[1].getsockname())
finally:
    server.terminate()
    server.wait(20)
"""


def _python312() -> str | None:
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    candidates = [shutil.which("python3.12"), *pyenv]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
                               capture_output=True, text=True, timeout=30)
        if probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.fixture(scope="module")
def python312() -> str:
    found = _python312()
    if found is None:
        pytest.skip("no Python 3.12 interpreter on this machine (python3.12 on PATH or under ~/.pyenv)")
    return found


def test_every_module_compiles_under_312(python312: str, tmp_path: Path) -> None:
    result = subprocess.run([python312, "-m", "compileall", "-q", "services", "tests", "bench"], cwd=REPO,
                            # 3.12's .pyc files go to tmp_path, not into the tree
                            env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_standard_library_parts_run_under_312(python312: str) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run([python312, "-c", SCRIPT], cwd=REPO,  # no 3.12 .pyc files left in the tree
                            env={**environment, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("paired")
