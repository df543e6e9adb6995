"""Every entry point the images, compose and the templates name is real: a module that
``python -m`` can run, or a handler ``module.function`` that a Lambda runtime can import.

Modules move (the layout issue moved the runtime out of the worker); the templates are text and
would keep naming the old place. Read from the files themselves, so a new entry point is checked
the day it is written.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import re

import pytest

from tests.common import REPO

#: Lines that start something: Dockerfile ENTRYPOINT/CMD, compose entrypoint/command, CloudFormation
#: EntryPoint/Command (a Command may continue on the next lines as a YAML list).
_LAUNCH = re.compile(r"^\s*(?:ENTRYPOINT|CMD|entrypoint:|command:|EntryPoint:|Command:)(?P<rest>.*)$")
_NAME = re.compile(r"\bservices(?:\.[a-z_][a-z0-9_]*)+")
_SOURCES = ["Dockerfile", "compose.yaml",
            *sorted(path.relative_to(REPO).as_posix() for path in (REPO / "infra").glob("*.yaml"))]


def _launch_text(path: str) -> str:
    """The launching lines of a file, each with the indented list lines that continue it."""
    lines, picked, inside = (REPO / path).read_text().splitlines(), [], None
    for line in lines:
        stripped = line.split(" #", 1)[0]
        if stripped.lstrip().startswith("#"):
            continue
        if _LAUNCH.match(stripped):
            inside = len(line) - len(line.lstrip())
            picked.append(stripped)
        elif inside is not None and stripped.strip().startswith("- ") and len(line) - len(line.lstrip()) > inside:
            picked.append(stripped)
        else:
            inside = None
    return "\n".join(picked)


def _entry_points() -> list[tuple[str, str]]:
    return sorted({(path, name) for path in _SOURCES for name in _NAME.findall(_launch_text(path))})


def test_the_reader_finds_the_entry_points_we_know_of() -> None:
    names = {name for _, name in _entry_points()}
    assert {"services.rendezvous", "services.coordinator", "services.rendezvous.register",
            "services.local.runtime", "services.worker.handler.handler",
            "services.coordinator.lambda_handlers.plan_handler",
            "services.coordinator.lambda_handlers.summarize_handler"} <= names, names


def _module_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # ``name``'s parent is a module, not a package: ``name`` is an attribute
        return None


@pytest.mark.parametrize(("source", "name"), _entry_points())
def test_every_entry_point_imports(source: str, name: str) -> None:
    if name.startswith("services.worker."):
        pytest.importorskip("torch")  # the worker image has it; this machine may not
    spec = _module_spec(name)
    if spec is not None:  # ``python -m name``: a module, or a package with a __main__
        if spec.submodule_search_locations is not None:
            assert _module_spec(f"{name}.__main__") is not None, f"{source}: {name} has no __main__"
        return
    module_name, _, attribute = name.rpartition(".")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute, None)), f"{source} names {name}, which {module_name} does not define"


def test_compose_scripts_exist() -> None:
    text = (REPO / "compose.yaml").read_text()
    for script in re.findall(r"\./(compose/[\w./-]+\.py)", text):
        assert (REPO / script).is_file(), script
