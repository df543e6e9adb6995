"""The test layout's own rules: shared helpers come from tests/common.py, conftests skip nothing
when imported, and the tests that need no torch run, and pass, where torch is missing."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common import REPO

TESTS = REPO / "tests"


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_no_test_imports_another_folders_conftest() -> None:
    crossing = []
    for path in sorted(TESTS.rglob("*.py")):
        folder = ".".join(path.relative_to(REPO).parent.parts)
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("conftest") \
                    and node.module != f"{folder}.conftest":
                crossing.append(f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}")
    assert not crossing, "shared helpers belong in tests/common.py:\n" + "\n".join(crossing)


def test_conftests_skip_nothing_when_imported() -> None:
    """``importorskip`` at a conftest's top would skip every test below it, needed or not."""
    found = []
    for path in sorted(TESTS.rglob("conftest.py")):
        for statement in _parsed(path).body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Attribute) and node.attr == "importorskip" \
                        and not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, "skip in the fixture that needs the dependency:\n" + "\n".join(found)


#: Tests that need no torch: the coordinator's summary (with its proof that the coordinator never
#: loads torch), its reports, plots and planning errors, the sweep's seed table, the worker contract
#: and the captured events.
WITHOUT_TORCH = ["tests/coordinator/test_summary.py", "tests/coordinator/test_plots.py",
                 "tests/coordinator/test_report.py", "tests/coordinator/test_missing_prefix.py",
                 "tests/client/test_seedtable.py", "tests/contracts"]


@pytest.mark.integration
def test_tests_that_need_no_torch_pass_without_it() -> None:
    """pytest in a child where ``import torch`` fails, as on a machine without it: no skips."""
    hide = ("import sys; sys.modules['torch'] = None; import pytest; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *{WITHOUT_TORCH!r}]))")
    done = subprocess.run([sys.executable, "-c", hide], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in .*", summary), done.stdout[-3000:]
    assert int(summary.split()[0]) > 50
