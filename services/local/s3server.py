"""A real S3 API server on loopback (moto's server) as a child process, for tests and benchmarks.

Used where there is neither AWS nor Docker (this machine's kind): the code under test still talks
to S3 through boto3 over HTTP, only the endpoint differs. Needs the ``moto[server]`` package.
The embedded stack starts its own, detached, server but shares :func:`s3_answers`.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from services.local.errors import S3ServerError
from services.local.processes import Child, ChildError, python, start
from services.ports import free_port


def s3_answers(port: int) -> bool:
    """An S3 API answers on the port (ListBuckets), not merely something listening there: a port
    asked for a moment ago may have been taken by another process meanwhile."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status == 200 and b"ListAllMyBucketsResult" in response.read()
    except OSError:
        return False


class S3Server:
    """Start with :meth:`start`; ``endpoint`` is the URL for ``AWS_ENDPOINT_URL_S3``."""

    def __init__(self, port: int = 0, log_path: Path | None = None, module: str = "moto.server",
                 cwd: Path | None = None) -> None:
        """``module`` is what ``python -m`` runs (moto's server, or a wrapper of it) from ``cwd``."""
        self.port = port or free_port()
        self._module, self._cwd = module, cwd
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._child: Child | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        self._child = start(python(self._module, "-H", "127.0.0.1", "-p", str(self.port)), name="moto's S3 server",
                            log=self._log_path, append=True, env={**os.environ, "MOTO_PORT": str(self.port)},
                            cwd=self._cwd, new_session=True)
        try:
            self._child.wait_ready(lambda: s3_answers(self.port), timeout)
        except ChildError as exc:
            self.stop()
            raise S3ServerError(f"{exc}\n(is moto[server] installed?)", port=self.port) from None
        return self

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
