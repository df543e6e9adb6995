"""The templates of ``infra/`` and the parameters we pass them, checked before CloudFormation sees them.

CloudFormation rejects a bad parameter only after a round trip, with a message that names
neither our option nor the stack; checking here (also in ``--dry-run``, without an account)
turns that into an error naming both. The YAML uses CloudFormation's short tags (``!Ref``,
``!Sub``...), which a plain YAML loader refuses, so they are read as opaque values: only the
``Parameters`` section, which holds none, is interpreted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from services.deploy.errors import TemplateError

INFRA = Path(__file__).resolve().parents[2] / "infra"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps CloudFormation's ``!Tag value`` as ``{"Tag": value}``."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tagged)


@dataclass(frozen=True)
class Template:
    """One template: its file, its text (sent as is) and its parameter declarations."""

    path: Path
    body: str
    parameters: dict[str, dict[str, Any]]

    @property
    def required(self) -> set[str]:
        return {name for name, spec in self.parameters.items() if "Default" not in spec}

    def check(self, values: dict[str, str | None]) -> None:
        """Every required parameter is given, none is unknown, and each value fits its declaration.

        A value of None is one not known yet (an earlier stack's output, in a dry run): it counts
        as given and is checked when it is known.
        """
        where = self.path.name
        unknown = sorted(set(values) - set(self.parameters))
        if unknown:
            raise TemplateError(f"{where} declares no parameter {', '.join(unknown)}", template=where)
        missing = sorted(self.required - set(values))
        if missing:
            raise TemplateError(f"{where} needs a value for {', '.join(missing)}", template=where)
        for name, value in values.items():
            if value is None:
                continue
            problem = _violation(self.parameters[name], value)
            if problem:
                raise TemplateError(f"{where}: parameter {name}={value!r} {problem}", template=where)


def _violation(spec: dict[str, Any], value: str) -> str | None:
    kind = str(spec.get("Type", "String"))
    items = [item.strip() for item in value.split(",")] if kind.startswith("List<") or kind == "CommaDelimitedList" \
        else [value]
    for item in items:
        if kind == "Number":
            try:
                number = float(item)
            except ValueError:
                return "is not a number"
            if "MinValue" in spec and number < float(spec["MinValue"]):
                return f"is below MinValue {spec['MinValue']}"
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                return f"is above MaxValue {spec['MaxValue']}"
        if "AllowedValues" in spec and item not in [str(allowed) for allowed in spec["AllowedValues"]]:
            return f"is not one of {spec['AllowedValues']}"
        if "AllowedPattern" in spec and not re.fullmatch(str(spec["AllowedPattern"]), item):
            return f"does not match AllowedPattern {spec['AllowedPattern']}"
        if kind != "Number" and not item and "AllowedPattern" not in spec:
            return "is empty"  # where no pattern says an empty value is meant
    return None


def load(name: str, folder: Path = INFRA) -> Template:
    """Read ``infra/<name>.yaml``."""
    path = folder / f"{name}.yaml"
    try:
        body = path.read_text()
        document = yaml.load(body, Loader=_CfnLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read {path}: {exc}", template=str(path)) from None
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{path} is not a CloudFormation template (no Resources)", template=str(path))
    parameters = document.get("Parameters") or {}
    return Template(path, body, {str(key): dict(spec) for key, spec in parameters.items()})
