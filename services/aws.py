"""The standard AWS variables, read one way where we need their values ourselves.

boto3 reads ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` and the credentials
itself; these are for what we compute from them (a function ARN, the region a report names, an
S3 client for another environment than ours). Standard library only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: The region when none is set, as boto3's own examples and moto assume.
DEFAULT_REGION = "us-east-1"


def aws_region(environ: Mapping[str, str] | None = None) -> str:
    """``AWS_REGION`` (what Lambda sets), else ``AWS_DEFAULT_REGION`` (the CLI's), else us-east-1."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def s3_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else None (AWS itself)."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None


def lambda_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``AWS_ENDPOINT_URL_LAMBDA``, else ``AWS_ENDPOINT_URL``, else None (AWS itself)."""
    environ = os.environ if environ is None else environ
    return environ.get("AWS_ENDPOINT_URL_LAMBDA") or environ.get("AWS_ENDPOINT_URL") or None
