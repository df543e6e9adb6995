"""Settings resolved as argument > environment variable > default, every name in one place.

Each service declares one frozen dataclass of settings with typed fields and defaults; this
module fills it from ``COSMIC_<SERVICE>_<FIELD>`` environment variables, so that a setting is
named exactly once (the field) and documented next to its default. Standard library only: every
service, however lean its image, can use it.

A settings class may say, as class variables:

``ENV_PREFIX``
    its ``COSMIC_<SERVICE>_`` prefix, so that callers need not repeat it;
``ENV_ALIASES``
    field -> the variable that set it before it was renamed. The old name keeps working, the
    new one wins when both are set, and each old name read is announced once per process by a
    ``setting_renamed`` log event (not a Python warning: warnings are errors under the tests).

A field whose type is itself such a settings class (one with an ``ENV_PREFIX``) is loaded with
that class's prefix: a value two services must agree on (the worker function's name and
timeout, :mod:`services.function`) is defined once and read by both through it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_announced: set[tuple[str, str]] = set()  # (old, new) names already announced by this process
_announced_lock = threading.Lock()
log = logging.getLogger("cosmic.settings")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def env_name(prefix: str, field: str) -> str:
    """The environment variable that sets ``field``, e.g. ``COSMIC_RENDEZVOUS_PORT``."""
    return f"{prefix}{field.upper()}"


def _prefix_of(cls: type, prefix: str | None) -> str:
    if prefix is not None:
        return prefix
    declared = getattr(cls, "ENV_PREFIX", None)
    if not isinstance(declared, str):
        raise TypeError(f"{cls.__name__} declares no ENV_PREFIX: pass the prefix")
    return declared


def _aliases_of(cls: type) -> Mapping[str, str]:
    return typing.cast(Mapping[str, str], getattr(cls, "ENV_ALIASES", {}))


def _nested(kind: Any) -> bool:
    """A field holding another settings class, loaded with that class's own prefix."""
    declared = getattr(kind, "ENV_PREFIX", None)
    return isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(declared, str)


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


def _announce(old: str, new: str, used: str) -> None:
    with _announced_lock:
        if (old, new) in _announced:
            return
        _announced.add((old, new))
    from services.logs import event  # here: logs reads its own settings through this module

    event(log, "setting_renamed", logging.WARNING, old=old, new=new, used=used)


def _raw(environ: Mapping[str, str], variable: str, old: str | None) -> tuple[str, str] | None:
    """``(variable read, its value)`` from the new name, else the old one; empty counts as unset."""
    new_value = environ.get(variable, "")
    old_value = environ.get(old, "") if old else ""
    if old and old_value != "":
        _announce(old, variable, variable if new_value != "" else old)
    if new_value != "":
        return variable, new_value
    if old and old_value != "":
        return old, old_value
    return None


def lookup(cls: type, field: str, environ: Mapping[str, str] | None = None, prefix: str | None = None) -> Any:
    """The value the environment gives ``cls``'s ``field`` (its alias honoured), or None when unset."""
    environ = os.environ if environ is None else environ
    variable = env_name(_prefix_of(cls, prefix), field)
    found = _raw(environ, variable, _aliases_of(cls).get(field))
    return None if found is None else _parse(found[1], typing.get_type_hints(cls)[field], found[0])


def load(cls: type[T], prefix: str | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """Build settings ``cls``: explicit ``overrides`` (not None) win, then the environment, then defaults.

    ``prefix`` defaults to the class's ``ENV_PREFIX``.
    """
    environ = os.environ if environ is None else environ
    prefix = _prefix_of(cls, prefix)
    aliases = _aliases_of(cls)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        override = overrides.pop(field.name, None)
        if override is not None:
            values[field.name] = override
            continue
        kind = hints[field.name]
        if _nested(kind):
            values[field.name] = load(kind, None, environ)
            continue
        variable = env_name(prefix, field.name)
        found = _raw(environ, variable, aliases.get(field.name))
        if found is not None:
            values[field.name] = _parse(found[1], kind, found[0])
    if overrides:
        raise TypeError(f"unknown settings for {cls.__name__}: {', '.join(sorted(overrides))}")
    return cls(**values)


def variables(cls: type, prefix: str | None = None) -> dict[str, str]:
    """Every variable ``cls`` reads (nested settings included) -> the field it sets, e.g. ``worker.timeout``."""
    prefix = _prefix_of(cls, prefix)
    hints = typing.get_type_hints(cls)
    found: dict[str, str] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        if _nested(hints[field.name]):
            found.update({name: f"{field.name}.{inner}" for name, inner in variables(hints[field.name]).items()})
        else:
            found[env_name(prefix, field.name)] = field.name
    return found


def renamed(cls: type, prefix: str | None = None) -> dict[str, str]:
    """Every old variable name ``cls`` still reads (nested settings included) -> its new name."""
    prefix = _prefix_of(cls, prefix)
    hints = typing.get_type_hints(cls)
    found = {old: env_name(prefix, field) for field, old in _aliases_of(cls).items()}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if _nested(hints[field.name]):
            found.update(renamed(hints[field.name]))
    return found


def describe(cls: type, field: str, prefix: str | None = None) -> str:
    """The variable of ``field`` for a message: ``COSMIC_COORDINATOR_API_TOKEN (formerly COSMIC_API_TOKEN)``."""
    variable = env_name(_prefix_of(cls, prefix), field)
    old = _aliases_of(cls).get(field)
    return f"{variable} (formerly {old})" if old else variable
