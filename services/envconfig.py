"""Settings resolved as argument > environment variable > default, every name in one place.

Each service declares one frozen dataclass of settings with typed fields and defaults; this
module fills it from ``COSMIC_<SERVICE>_<FIELD>`` environment variables, so that a setting is
named exactly once (the field) and documented next to its default. Standard library only: every
service, however lean its image, can use it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def env_name(prefix: str, field: str) -> str:
    """The environment variable that sets ``field``, e.g. ``COSMIC_RENDEZVOUS_PORT``."""
    return f"{prefix}{field.upper()}"


def _parse(raw: str, kind: Any, variable: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected one of 1/0, true/false, yes/no, on/off")
        if kind in (int, float, str):
            return kind(raw.strip()) if kind is not str else raw
    except ValueError as exc:
        raise SettingsError(f"{variable}={raw!r}: {exc}") from None
    raise TypeError(f"unsupported settings type {kind!r} for {variable}")


def load(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build settings ``cls``: explicit ``overrides`` (not None) win, then the environment, then defaults."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        override = overrides.pop(field.name, None)
        if override is not None:
            values[field.name] = override
            continue
        variable = env_name(prefix, field.name)
        if variable in environ and environ[variable] != "":
            values[field.name] = _parse(environ[variable], hints[field.name], variable)
    if overrides:
        raise TypeError(f"unknown settings for {cls.__name__}: {', '.join(sorted(overrides))}")
    return cls(**values)
