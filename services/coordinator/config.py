"""Every setting of the coordinator: ``COSMIC_<FIELD>`` variables, then these defaults.

Endpoints are not settings of ours: boto3 reads the standard ``AWS_ENDPOINT_URL_S3`` and
``AWS_ENDPOINT_URL_LAMBDA`` (and region, profile, credentials) itself, so the same coordinator
talks to AWS, to LocalStack plus the local runtime under compose, and to the embedded stack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from services import envconfig
from services.contracts import split_endpoint

ENV_PREFIX = "COSMIC_"


@dataclass(frozen=True)
class CoordinatorSettings:
    """Where the coordinator listens, what it invokes, where it keeps state, and its limits."""

    #: The API's address; anything beyond loopback requires ``api_token``.
    coordinator_host: str = "127.0.0.1"
    coordinator_port: int = 8000
    #: Bearer token the API requires when set (``Authorization: Bearer <token>``).
    api_token: str = ""
    #: Bucket of job manifests (under ``jobs/``); empty means each job's payload ``bucket``.
    state_bucket: str = ""
    #: ``host:port`` of the rendezvous server, resolved when each job starts; empty: no communicator.
    rendezvous_endpoint: str = ""
    #: The worker function invoked when a payload names none (the local runtime answers to it too).
    worker_function: str = "cosmic-worker"
    #: The worker function's timeout, seconds: invocations read for this long plus a margin.
    worker_timeout: float = 900.0
    #: Largest world size a job may ask for.
    max_world_size: int = 2048
    #: Largest ``max_concurrency`` (and the invoke connection pool).
    max_concurrency_limit: int = 1000
    #: Largest request body, bytes.
    max_body_bytes: int = 64 * 1024
    #: Attempts per rank when the payload does not say.
    max_attempts: int = 3
    #: A job not done after this many seconds is failed (its remaining ranks are not scheduled).
    job_deadline_s: float = 3600.0
    #: Invoke retries on throttling and service errors, per attempt, with exponential backoff.
    invoke_retries: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.coordinator_port <= 65535:
            raise envconfig.SettingsError(f"coordinator_port must be within 0..65535, got {self.coordinator_port}")
        if self.rendezvous_endpoint:
            try:
                split_endpoint(self.rendezvous_endpoint)
            except ValueError:
                raise envconfig.SettingsError(
                    f"COSMIC_RENDEZVOUS_ENDPOINT must be host:port, got {self.rendezvous_endpoint!r}") from None
        for name in ("max_world_size", "max_concurrency_limit", "max_body_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise envconfig.SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.worker_timeout <= 900:
            raise envconfig.SettingsError(f"worker_timeout must be within (0, 900] s, got {self.worker_timeout}")
        if not is_loopback(self.coordinator_host) and not self.api_token:
            raise envconfig.SettingsError(
                f"refusing to listen on {self.coordinator_host} without an API token: set COSMIC_API_TOKEN "
                "(or listen on 127.0.0.1)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> CoordinatorSettings:
    return envconfig.load(CoordinatorSettings, ENV_PREFIX, environ, **overrides)
