"""Exceptions of the local stand-ins for AWS; standard library only, as the local runtime is.

::

    LocalError                 a local stand-in cannot start or serve; the message ends with where to look
    ├── S3ServerError          moto's S3 server did not start on ``port`` (missing package, port taken, crashed)
    ├── SandboxError           a sandbox of the local Lambda runtime (``sandbox``) cannot take invocations;
    │                          ``body`` is the error as Lambda would return it
    ├── EmbeddedError          the one-machine stack, or its ``service``, did not start or answer
    ├── SnapshotUnreadable     a saved S3 snapshot's manifest (``path``) cannot be read (also a ValueError)
    └── ChildError             a child process (``name``) exited while starting or was not ready in time;
                               the message ends with its ``log``'s tail
"""

from __future__ import annotations

from pathlib import Path


class LocalError(Exception):
    """A local stand-in for AWS cannot start or serve."""


class S3ServerError(LocalError):
    """moto's S3 server did not start on ``port`` (missing package, port taken, crashed)."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class SandboxError(LocalError):
    """Sandbox ``sandbox`` cannot take invocations; ``body`` is the error as Lambda would return it."""

    def __init__(self, message: str, body: bytes, *, sandbox: int | None = None) -> None:
        super().__init__(message)
        self.body = body
        self.sandbox = sandbox


class EmbeddedError(LocalError):
    """A service of the stack did not start or answer (``service``, when it is one service's fault);
    the message ends with its log's tail."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class SnapshotUnreadable(LocalError, ValueError):
    """The manifest of a saved S3 snapshot at ``path`` is not one this code wrote."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


class ChildError(LocalError):
    """A child exited while starting, or was not ready in time; the message ends with its log's tail."""

    def __init__(self, message: str, name: str, log: Path | None) -> None:
        super().__init__(message)
        self.name, self.log = name, log
