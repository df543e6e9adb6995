"""Settings, logs and the ``cosmic`` command: the pieces every service shares."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services import envconfig, logs
from services.cli import COMMANDS, main


@dataclass(frozen=True)
class _Example:
    port: int = 1
    ratio: float = 0.5
    name: str = "x"
    enabled: bool = False


def test_settings_precedence_argument_then_environment_then_default() -> None:
    environ = {"T_PORT": "7", "T_RATIO": "0.25", "T_ENABLED": "yes"}
    loaded = envconfig.load(_Example, "T_", environ, port=9)
    assert loaded == _Example(port=9, ratio=0.25, name="x", enabled=True)
    assert envconfig.load(_Example, "T_", {}) == _Example()


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(envconfig.SettingsError, match="T_PORT='seven'"):
        envconfig.load(_Example, "T_", {"T_PORT": "seven"})
    with pytest.raises(envconfig.SettingsError, match="T_ENABLED"):
        envconfig.load(_Example, "T_", {"T_ENABLED": "maybe"})


def test_unknown_override_is_refused() -> None:
    with pytest.raises(TypeError, match="colour"):
        envconfig.load(_Example, "T_", {}, colour="red")


@pytest.fixture
def captured_logs() -> Iterator[Callable[[str], io.StringIO]]:
    """Configure the logs in a format, into a string; restores the root logger afterwards."""

    def capture(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        logs.configure(fmt, "INFO", stream)
        return stream

    yield capture
    logging.getLogger().handlers.clear()


def test_json_log_lines_carry_their_context(captured_logs: Callable[[str], io.StringIO]) -> None:
    stream = captured_logs("json")
    logs.event(logging.getLogger("cosmic.test"), "paired", name="job", rank=3)
    line = json.loads(stream.getvalue())
    assert line["event"] == "paired" and line["name"] == "job" and line["rank"] == 3
    assert line["level"] == "info" and line["logger"] == "cosmic.test"


def test_text_log_lines_quote_what_needs_it(captured_logs: Callable[[str], io.StringIO]) -> None:
    stream = captured_logs("text")
    logs.event(logging.getLogger("cosmic.test"), "said", text="two words", n=1)
    assert stream.getvalue().rstrip().endswith('said text="two words" n=1')


def test_rate_limited_event_counts_what_it_held_back(captured_logs: Callable[[str], io.StringIO]) -> None:
    stream = captured_logs("json")
    limited = logs.RateLimitedEvent(logging.getLogger("cosmic.test"), "refused", interval=3600)
    for _ in range(5):
        limited(reason="full")
    assert len(stream.getvalue().splitlines()) == 1
    limited._next = 0.0  # the interval has passed
    limited(reason="full")
    assert json.loads(stream.getvalue().splitlines()[1])["suppressed_since_last"] == 4
    limited.held_back(7)  # events a producer could only count (the C rendezvous hub's full queue)
    limited(reason="full")
    limited._next = 0.0
    limited(reason="full")
    assert json.loads(stream.getvalue().splitlines()[2])["suppressed_since_last"] == 8


def test_cli_lists_every_command_of_the_plan_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    listing = capsys.readouterr().out
    plan = ["demo", "serve", "stop", "submit", "status", "cancel", "retry", "logs", "report", "sweep", "data",
            "rendezvous", "runtime", "worker", "convert-checkpoint", "export", "deploy", "plan"]
    assert sorted(COMMANDS) == sorted(plan) and all(name in listing for name in plan)
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.integration
def test_rendezvous_subcommand_does_not_import_other_services() -> None:
    code = ("import sys; from services.cli import main; import services.rendezvous.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'boto3', 'numpy', 'fastapi')]; "
            "print(bad)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.e2e
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's main command, smaller: one job of 2 ranks over 2 partitions, the whole stack.

    It uses the cache folder the real demo uses (the demo data is made there once, about a
    minute of fitting on a fresh machine), and writes its results under a temporary folder.
    """
    result = subprocess.run([sys.executable, "-m", "services.cli", "demo", "--world-sizes", "2", "--partitions", "2",
                             "--out", str(tmp_path / "results")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "result: OK" in result.stdout
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/#token=\S+", result.stdout), "the dashboard's link"
    shots = "screenshots of the dashboard: " in result.stdout  # where Chromium is; else the reason why not
    assert shots or "no screenshots of the dashboard: " in result.stdout
    assert not shots or (tmp_path / "results" / "screenshots" / "job.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "results" / "sweep.md").read_text().count("25MB") >= 1
    assert (tmp_path / "results" / "duration_cost.png").read_bytes().startswith(b"\x89PNG")
