"""The layout's rules, checked over the import graph read from the source (every import, lazy ones
inside functions too), so a rule broken on a path no test happens to run still fails here.

- the rendezvous imports nothing of the other services (its image has only the standard library and
  boto3 for its DNS registration; the communicator touches numpy and torch only for values given to it);
- the coordinator imports nothing of the worker package and never torch (its image has no torch);
- the contracts shared by coordinator and worker import neither torch nor boto3;
- the local stand-ins of AWS import no coordinator code (the coordinator reaches them as it reaches AWS);
- no module under ``services/`` is over 400 lines.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "services"
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICES.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SERVICES.rglob("*.py"))}


@functools.cache
def _imports(module: str) -> frozenset[str]:
    """Every module ``module`` names in an import statement, resolved to absolute names."""
    path = _modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import module``
    return frozenset(names)


def _reach(start: str) -> dict[str, list[str]]:
    """Every module reachable from ``start`` (ours and third-party), with one import chain to each."""
    chains: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        current = frontier.pop()
        for name in _imports(current):
            target = _ours(name)
            key = target or name
            if key in chains:
                continue
            chains[key] = [*chains[current], key]
            if target is not None:
                frontier.append(target)
    return chains


def _ours(name: str) -> str | None:
    """The module of ours that importing ``name`` runs (its own file, else its package's)."""
    while name:
        if name in _modules():
            return name
        name = name.rpartition(".")[0]
    return None


def _package_modules(prefix: str) -> Iterable[str]:
    return [name for name in _modules() if name == prefix or name.startswith(prefix + ".")]


def _violations(sources: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for module in _package_modules(sources):
        for reached, chain in _reach(module).items():
            if any(reached == bad or reached.startswith(bad + ".") for bad in forbidden):
                found.append(" -> ".join(chain))
    return sorted(set(found))


RULES = {
    "the rendezvous imports nothing of the other services": (
        "services.rendezvous", ("services.coordinator", "services.worker", "services.local", "services.client",
                                "services.deploy")),  # torch only for tensors a caller hands the communicator
    "the coordinator imports nothing of the worker and never torch": (
        "services.coordinator", ("services.worker", "torch")),
    "the contracts import neither torch nor boto3": ("services.contracts", ("torch", "boto3", "botocore")),
    "the object keys import neither torch nor boto3": ("services.keys", ("torch", "boto3", "botocore")),
    "the progress record imports neither torch nor boto3": ("services.progress", ("torch", "boto3", "botocore")),
    "the local stand-ins import no coordinator code": ("services.local", ("services.coordinator",)),
}


@pytest.mark.parametrize("rule", RULES)
def test_dependencies_flow_one_way(rule: str) -> None:
    sources, forbidden = RULES[rule]
    assert _package_modules(sources), f"no modules under {sources}: the rule checks nothing"
    assert _violations(sources, forbidden) == [], rule


def test_the_checker_sees_lazy_imports_and_chains(tmp_path: Path) -> None:
    """The checker itself can fail: a lazy import two modules away is found, with its chain."""
    chains = _reach("services.client.demo")
    assert "services.local.stack" in chains  # imported lazily, inside a function
    assert chains["services.local.stack"][0] == "services.client.demo"
    assert _violations("services.client", ("services.local",)) != []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by what its parts do"
