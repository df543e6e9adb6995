"""Fixtures every service's tests share: a real S3 API server (moto's) on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.common import CREDENTIALS


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a child process; the standard variables point boto3 at it for the session."""
    pytest.importorskip("moto")
    from services.local.s3server import S3Server

    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_ENDPOINT_URL_S3"]}
    with S3Server(log_path=tmp_path_factory.mktemp("s3") / "moto.log") as server:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL_S3=server.endpoint)
        try:
            yield server.endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
