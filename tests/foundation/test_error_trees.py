"""The error trees drawn in each service's ``errors.py`` (and the README's copy) match the classes.

A drawing is a literal block (after ``::``) of rows ``Name   what it means``, children below
their parent behind ``├──``/``└──``. A drawn child must have the drawn parent as its nearest
drawn ancestor, a root none; every exception class a service's package defines must be drawn.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import pytest

from services import contracts, envconfig, progress, s3store
from tests.common import REPO

SERVICES = ["services.coordinator", "services.worker", "services.deploy", "services.local", "services.client",
            "services.rendezvous"]
#: The neutral modules' exceptions, drawn in the README only.
SHARED: dict[str, type[BaseException]] = {"FieldError": contracts.FieldError, "EventError": contracts.EventError,
                                          "ProgressError": progress.ProgressError,
                                          "StoreError": s3store.StoreError, "SettingsError": envconfig.SettingsError}
_ROW = re.compile(r"^(?P<lead>(?:[ │]*[├└]── )?[ ]*)(?P<name>[A-Z][A-Za-z0-9]*)(?: {2,}|$)")

Edges = dict[str, str | None]  # drawn class -> its drawn parent (None for a root)


def parse_tree(lines: list[str]) -> Edges:
    """The drawn parent of every class drawn in ``lines`` (one or more trees)."""
    edges: Edges = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        match = _ROW.match(line)
        if not match:
            continue  # a description's continuation line, or prose
        column, name = len(match["lead"]), match["name"]
        while stack and stack[-1][0] >= column:
            stack.pop()
        assert name not in edges, f"{name} is drawn twice"
        edges[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return edges


def literal_blocks(doc: str) -> list[list[str]]:
    """The literal blocks of a reST docstring: the indented lines after a line ending in ``::``."""
    lines, blocks = doc.splitlines(), []
    for index, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        indent, block = len(line) - len(line.lstrip()), []
        for following in lines[index + 1:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following)
        blocks.append(block)
    return blocks


def drawn(errors: ModuleType) -> Edges:
    """Every tree drawn in an ``errors`` module: its docstring's and its classes' docstrings'."""
    docs = [errors.__doc__ or ""] + [inspect.cleandoc(cls.__doc__ or "") for cls in vars(errors).values()
                                     if inspect.isclass(cls) and cls.__module__ == errors.__name__]
    edges: Edges = {}
    for doc in docs:
        for block in literal_blocks(doc):
            tree = parse_tree(block)
            assert not set(tree) & set(edges), f"{sorted(set(tree) & set(edges))} drawn twice in {errors.__name__}"
            edges.update(tree)
    return edges


def package_exceptions(package: str) -> dict[str, type[BaseException]]:
    """Every exception class defined in ``package``'s modules (imported, ``__main__`` aside)."""
    root = importlib.import_module(package)
    modules = [root] + [importlib.import_module(info.name)
                        for info in pkgutil.walk_packages(root.__path__, package + ".")
                        if not info.name.endswith("__main__")]
    return {cls.__name__: cls for module in modules for cls in vars(module).values()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__.startswith(package + ".")}


def check_edges(edges: Edges, classes: dict[str, type[BaseException]], where: str) -> None:
    for name, parent in edges.items():
        assert name in classes, f"{where} draws {name}, which is not one of its exception classes"
        nearest = next((c.__name__ for c in classes[name].__mro__[1:] if c.__name__ in edges), None)
        assert nearest == parent, f"{where} draws {name} under {parent}; its nearest drawn base is {nearest}"


def _service(package: str) -> tuple[Edges, dict[str, type[BaseException]]]:
    try:
        errors = importlib.import_module(package + ".errors")
        classes = package_exceptions(package)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("services"):
            raise
        pytest.skip(f"{package} needs {exc.name}")
    return drawn(errors), classes


@pytest.mark.parametrize("package", SERVICES)
def test_each_service_draws_its_real_error_tree(package: str) -> None:
    edges, classes = _service(package)
    assert any(parent is None for parent in edges.values()), f"{package}.errors draws no tree"
    check_edges(edges, classes, f"{package}.errors")
    undrawn = sorted(set(classes) - set(edges))
    assert not undrawn, f"{package} defines {undrawn}, which {package}.errors does not draw"
    elsewhere = sorted(name for name, cls in classes.items() if cls.__module__ != package + ".errors")
    assert not elsewhere, f"{elsewhere} are defined outside {package}.errors"


def test_the_parser_reads_nesting_and_skips_continuation_lines() -> None:
    block = ["    Base          root",
             "    ├── Child     one",
             "    │   │         continued, naming Other in passing",
             "    │   └── Leaf  two",
             "    └── Other     three",
             "    Second        another root"]
    assert parse_tree(block) == {"Base": None, "Child": "Base", "Leaf": "Child", "Other": "Base", "Second": None}


def test_the_readme_draws_the_same_trees() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, "the README's Errors section has no ```text drawing"
    in_readme: Edges = {}
    for block in blocks:
        in_readme.update(parse_tree(block.splitlines()))
    in_services: Edges = {}
    for package in SERVICES:
        edges, _ = _service(package)
        in_services.update(edges)
    missing = sorted(set(in_services) - set(in_readme))
    assert not missing, f"the README's Errors section does not draw {missing}"
    for name, parent in in_services.items():
        assert in_readme[name] == parent, f"the README draws {name} under {in_readme[name]}, errors.py under {parent}"
    shared = {name: parent for name, parent in in_readme.items() if name not in in_services}
    check_edges(shared, SHARED, "the README")
    assert set(shared) == set(SHARED), f"the README's shared errors are {sorted(shared)}, not {sorted(SHARED)}"
