"""Fixtures every service's tests share (a real S3 API server, moto's, on loopback), and the kinds.

Every test has exactly one kind, a marker, so that ``pytest -m unit`` runs in seconds:

* ``unit``: in-process and quick: starts no process and no server, builds no full-size model
  (enforced below);
* ``integration``: starts a server or a process (moto's S3, the rendezvous server, the local
  Lambda runtime, a stand-in HTTP server in a thread, ``python -c`` in a child), or works the
  real 15.9 M-parameter model (builds, fits or runs it: seconds per test on two cores);
* ``e2e``: the whole system at once (coordinator, runtime with the real worker, rendezvous, S3),
  or a command that starts all of it (``cosmic demo``, ``cosmic deploy`` against moto).

Beside its kind, every test under ``tests/faults/`` carries the ``faults`` marker (the fault
matrix: real processes killed, real servers stopped), so ``pytest -m faults`` runs it alone and
``pytest -m "not faults"`` leaves it out.

A fixture that starts something says so by requesting the ``integration`` (or ``e2e``) fixture,
so every test that uses it, directly or through other fixtures, gets that kind without anyone
remembering to mark it. A test that starts something itself carries the marker (on the test, or
``pytestmark`` for a whole module). What is left is ``unit``, and a unit test that starts a
process or a server, or builds the model, fails saying which marker it lacks.
"""

from __future__ import annotations

import asyncio
import os
import socket
import socketserver
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.common import CREDENTIALS

KINDS = ("unit", "integration", "e2e")  # in order: a test's kind is at least what its fixtures imply
FAULTS = Path(__file__).resolve().parent / "faults"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault matrix (tests/faults/): a real process killed or a real "
                                       "server stopped mid-job, and what the job ends as")


@pytest.fixture(scope="session")
def integration() -> None:
    """Requested by fixtures that start a server or a process: their tests are ``integration``."""


@pytest.fixture(scope="session")
def e2e() -> None:
    """Requested by fixtures that start the whole system: their tests are ``e2e``."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        if FAULTS in item.path.parents:
            item.add_marker("faults")
        marked = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
        implied = max((KINDS.index(kind) for kind in KINDS[1:] if kind in item.fixturenames), default=0)
        if len(marked) > 1:
            problems.append(f"{item.nodeid}: marked {' and '.join(sorted(marked))}; a test has one kind")
        elif marked and KINDS.index(next(iter(marked))) < implied:
            problems.append(f"{item.nodeid}: marked {next(iter(marked))}, but its fixtures make it {KINDS[implied]}")
        elif not marked:
            item.add_marker(KINDS[implied])
    if problems:
        raise pytest.UsageError("test kinds (tests/conftest.py):\n" + "\n".join(problems))


#: Programs ctypes.util.find_library runs to find a C library (the worker's malloc tuning uses it):
#: lookups inside the code under test, not processes a test starts to test against.
_LIBRARY_LOOKUPS = frozenset({"ldconfig", "gcc", "cc", "ld"})


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a unit test that starts a process or a server fail, rather than slow ``-m unit`` down."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a process or a server, or builds the full-size model, "
                             "so it is not a unit test: mark it integration (or e2e), or use a fixture that "
                             "requests `integration`")

    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def start_process(self: subprocess.Popen[bytes], args: Any, *rest: Any, **kwargs: Any) -> None:
        program = args if isinstance(args, str | bytes | os.PathLike) else args[0]
        if os.path.basename(os.fsdecode(program).split()[0]) not in _LIBRARY_LOOKUPS:
            refuse()
        execute_child(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", start_process)  # run, Popen, check_output
    monkeypatch.setattr(socket, "create_server", refuse)
    monkeypatch.setattr(socketserver.TCPServer, "server_activate", refuse)  # http.server and the like
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_server", refuse)
    model = sys.modules.get("services.worker.model")  # there when the test's module uses the model
    if model is not None:
        monkeypatch.setattr(model.RedshiftModel, "__init__", refuse)


@pytest.fixture(scope="session")
def s3_endpoint(integration: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a child process; the standard variables point boto3 at it for the session."""
    pytest.importorskip("moto")
    from services.local.s3server import S3Server

    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    with S3Server(log_path=tmp_path_factory.mktemp("s3") / "moto.log") as server:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=server.endpoint)
        try:
            yield server.endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
