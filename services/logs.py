"""Structured logs: one line per event, as ``key=value`` text or as JSON.

Every service logs through :func:`event`, which takes the event name and its context as
keywords, so a line can be grepped by eye and parsed by machine alike. ``COSMIC_LOG_FORMAT``
(``text`` or ``json``) and ``COSMIC_LOG_LEVEL`` choose the output (:class:`LogSettings`).
Standard library only.

Keys that hold for a stretch of work (a worker invocation's ``job_id``, ``rank``, ``request_id``
and ``cold_start``; a coordinator job's ``job_id``) are set once, as powertools' ``append_keys``
does, and every line logged meanwhile carries them: :func:`with_keys` for a block, reset when it
ends, so a warm sandbox's next invocation starts clean. They live in a context variable, which
a new thread does not inherit: work handed to a thread or pool goes through :func:`carry`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, ParamSpec, TypeVar

from services import envconfig

_FORMATS = ("text", "json")
_keys: contextvars.ContextVar[MappingProxyType[str, Any]] = contextvars.ContextVar(
    "cosmic_log_keys", default=MappingProxyType({}))
P = ParamSpec("P")
R = TypeVar("R")


def current_keys() -> dict[str, Any]:
    """The keys every line logged here and now carries."""
    return dict(_keys.get())


def append_keys(**keys: Any) -> None:
    """Add keys to every later line of this context (this thread, or this task); see :func:`with_keys`."""
    _keys.set(MappingProxyType({**_keys.get(), **keys}))


@contextlib.contextmanager
def with_keys(**keys: Any) -> Iterator[None]:
    """Every line logged within the block carries ``keys``; the keys before it are back after it."""
    token = _keys.set(MappingProxyType({**_keys.get(), **keys}))
    try:
        yield
    finally:
        _keys.reset(token)


def carry(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run, wherever it is called (a pool's thread), with the keys in place here and now.

    Each call runs in its own copy of the captured context: calls in several threads at once are fine.
    """
    captured = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(function, *args, **kwargs)

    return run


@dataclass(frozen=True)
class LogSettings:
    """How every service writes its log lines: ``COSMIC_LOG_<FIELD>``, shared by all of them."""

    ENV_PREFIX: ClassVar[str] = "COSMIC_LOG_"

    #: ``text`` (``key=value``) or ``json`` (one object per line, for CloudWatch).
    format: str = "text"
    #: The root logger's level.
    level: str = "INFO"

    def __post_init__(self) -> None:
        if self.format.lower() not in _FORMATS:
            raise envconfig.SettingsError(f"log format must be one of {', '.join(_FORMATS)}, got {self.format!r}")
        if not isinstance(logging.getLevelName(self.level.upper()), int):
            raise envconfig.SettingsError(f"unknown log level {self.level!r}")


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        # a plain logging call (a library's) has no fields: it gets the keys in place where it was made
        fields: dict[str, Any] = getattr(record, "fields", None) or current_keys()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        if self.as_json:
            line = {"ts": stamp, "level": record.levelname.lower(), "logger": record.name,
                    "event": record.getMessage(), **fields}
            if record.exc_info:
                line["exc"] = self.formatException(record.exc_info)
            return json.dumps(line, default=str, separators=(",", ":"))
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        text = f"{stamp} {record.levelname.lower():<7} {record.name} {record.getMessage()}"
        text = f"{text} {pairs}" if pairs else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(ch in text for ch in " \"=\n"):
        return json.dumps(text)
    return text


_CHATTY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


def configure(fmt: str | None = None, level: str | None = None, stream: Any = None) -> None:
    """Send every log line to ``stream`` (stderr) in the chosen format; idempotent."""
    settings = envconfig.load(LogSettings, format=fmt or None, level=level or None)
    fmt, level_name = settings.format.lower(), settings.level.upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    for chatty in _CHATTY_LIBRARIES:  # their INFO lines (endpoint discovery, connection pools) are noise here
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def event(logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log one event with its context; cheap when the level is disabled."""
    if logger.isEnabledFor(level):
        keys = _keys.get()
        logger.log(level, name, extra={"fields": {**keys, **fields} if keys else fields})


class RateLimitedEvent:
    """Logs an event at most once per ``interval`` seconds, counting what it held back.

    A limit that bites under abuse would otherwise write one line per refused connection and
    turn a flood of clients into a flood of logs.
    """

    def __init__(self, logger: logging.Logger, name: str, interval: float = 1.0,
                 level: int = logging.WARNING) -> None:
        self.logger, self.name, self.interval, self.level = logger, name, interval, level
        self._next = 0.0
        self._held_back = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held_back += 1
            return
        self._next = now + self.interval
        if self._held_back:
            fields["suppressed_since_last"] = self._held_back
            self._held_back = 0
        event(self.logger, self.name, self.level, **fields)

    def held_back(self, count: int) -> None:
        """Count ``count`` events that happened but were never passed here (a producer that
        could only count them, e.g. the C rendezvous hub's full queue), so the next line says so."""
        self._held_back += count
