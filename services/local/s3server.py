"""A real S3 API server on loopback (moto's server) as a child process, for tests and benchmarks.

Used where there is neither AWS nor Docker (this machine's kind): the code under test still talks
to S3 through boto3 over HTTP, only the endpoint differs. Needs the ``moto[server]`` package.
The embedded stack starts its own, detached, server but shares :func:`s3_answers`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

from services.local.errors import S3ServerError
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
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        self._log = open(self._log_path, "ab") if self._log_path else None  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            [sys.executable, "-m", self._module, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, cwd=self._cwd,
            env={**os.environ, "MOTO_PORT": str(self.port)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise S3ServerError(f"moto's S3 server exited with status {self._process.returncode} "
                                    f"(is moto[server] installed? log: {self._log_path})", port=self.port)
            if s3_answers(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise S3ServerError(f"moto's S3 server did not answer on port {self.port} within {timeout:.0f} s",
                            port=self.port)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
