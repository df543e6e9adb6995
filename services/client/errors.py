"""Exceptions of the ``cosmic`` job commands (the CLI client); standard library only.

Not named ``ClientError``: botocore's is, and both meet in the commands that read S3.

::

    CliError                        a job command cannot do what it was asked: one line on stderr, exit 1
    ├── ApiError                    the API refused or failed a request (``status``, ``detail`` as it sent it)
    │   └── CoordinatorUnreachable  nothing answered at ``url`` (``cosmic serve --embedded``?)
    ├── JobTimeout                  ``ApiClient.wait`` gave up before job ``job_id`` ended (also a TimeoutError)
    ├── DataStoreError              S3 refused or did not answer a ``cosmic data`` call (``bucket``, ``key``)
    ├── BrowserUnavailable          no headless Chromium, chromedriver or selenium here for screenshots
    └── CommandError                a problem the user fixes (a payload file, a partition count): exit 2
"""

from __future__ import annotations

from typing import Any


class CliError(Exception):
    """A job command failed; the message says what to do."""


class ApiError(CliError):
    """The API refused or failed a request; ``detail`` is its explanation, made readable."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class CoordinatorUnreachable(ApiError):
    """Nothing answered at the coordinator's URL, ``url``."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class JobTimeout(CliError, TimeoutError):
    """The job did not end within :meth:`ApiClient.wait`'s timeout (it keeps running); ``state`` is its last."""

    def __init__(self, message: str, *, job_id: str, state: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state


class DataStoreError(CliError):
    """S3 refused or did not answer a call the data commands made; ``bucket`` and ``key`` say where."""

    def __init__(self, message: str, *, bucket: str, key: str) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key


class CommandError(CliError):
    """A problem the user fixes (a payload file, a missing partition count): printed, exit 2."""


class BrowserUnavailable(CliError):
    """No browser to take the dashboard's screenshots with; the message says what is missing."""
