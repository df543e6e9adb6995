"""The coordinator process's collector: start-up frozen, young collections spaced out (:mod:`.heap`).

Each check runs in a fresh interpreter: freezing is process-wide and must never reach pytest's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.coordinator.heap import YOUNG_THRESHOLD
from tests.common import REPO

pytestmark = pytest.mark.integration  # each check starts an interpreter

#: Runs the coordinator's entry point with uvicorn replaced by a report of the collector's state
#: at the moment the API would start serving.
_SERVE = """
import gc, json, sys, uvicorn
from services.coordinator import cli
def report(app, **options):
    print(json.dumps({"frozen": gc.get_freeze_count(), "threshold": gc.get_threshold()}))
uvicorn.run = report
sys.exit(cli.run(cli_args))
"""


def _python(code: str) -> dict:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_settle_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    state = _python("import gc, json; from services.coordinator import heap; heap.settle(); "
                    "print(json.dumps({'frozen': gc.get_freeze_count(), 'threshold': gc.get_threshold()}))")
    assert state["frozen"] > 1000, state
    assert state["threshold"] == [YOUNG_THRESHOLD, 10, 10], state


def test_the_coordinator_process_settles_its_heap_before_it_serves() -> None:
    parse = ("import argparse; from services.coordinator import cli as c; p = argparse.ArgumentParser(); "
             "c.add_arguments(p); cli_args = p.parse_args(['--port', '9'])\n")
    state = _python(parse + _SERVE)
    assert state["frozen"] > 100_000, state  # botocore's models and the app, built before serving
    assert state["threshold"][0] == YOUNG_THRESHOLD, state
