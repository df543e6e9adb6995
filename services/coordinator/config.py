"""Every setting of the coordinator: ``COSMIC_COORDINATOR_<FIELD>`` variables, then these defaults.

The worker function's name and timeout are the worker's (``COSMIC_WORKER_FUNCTION``,
``COSMIC_WORKER_TIMEOUT``, :mod:`services.function`): the local runtime reads the same ones.
Settings renamed to the prefix keep their old names as aliases (``ENV_ALIASES``).

Endpoints are not settings of ours: boto3 reads the standard ``AWS_ENDPOINT_URL_S3`` and
``AWS_ENDPOINT_URL_LAMBDA`` (and region, profile, credentials) itself, so the same coordinator
talks to AWS, to LocalStack plus the local runtime under compose, and to the embedded stack.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from services import envconfig
from services.contracts import split_endpoint
from services.function import WorkerFunction

ENV_PREFIX = "COSMIC_COORDINATOR_"


@dataclass(frozen=True)
class CoordinatorSettings:
    """Where the coordinator listens, what it invokes, where it keeps state, and its limits."""

    ENV_PREFIX: ClassVar[str] = ENV_PREFIX
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {
        "api_token": "COSMIC_API_TOKEN", "state_bucket": "COSMIC_STATE_BUCKET",
        "rendezvous_endpoint": "COSMIC_RENDEZVOUS_ENDPOINT", "max_world_size": "COSMIC_MAX_WORLD_SIZE",
        "max_concurrency_limit": "COSMIC_MAX_CONCURRENCY_LIMIT", "max_body_bytes": "COSMIC_MAX_BODY_BYTES",
        "max_attempts": "COSMIC_MAX_ATTEMPTS", "job_deadline_s": "COSMIC_JOB_DEADLINE_S",
        "invoke_retries": "COSMIC_INVOKE_RETRIES"}

    #: The API's address; anything beyond loopback requires ``api_token``.
    host: str = "127.0.0.1"
    port: int = 8000
    #: Bearer token the API requires when set (``Authorization: Bearer <token>``).
    api_token: str = ""
    #: Bucket of job manifests (under ``jobs/``); empty means each job's payload ``bucket``.
    state_bucket: str = ""
    #: ``host:port`` of the rendezvous server, resolved when each job starts; empty: no communicator.
    rendezvous_endpoint: str = ""
    #: The worker function invoked when a payload names none, and its timeout (invocations are read
    #: for this long plus a margin).
    worker: WorkerFunction = field(default_factory=WorkerFunction)
    #: Largest world size a job may ask for. World size is not concurrency: ranks beyond
    #: ``max_concurrency`` (itself within the Lambda capacity, :mod:`.capacity`) wait for a slot.
    max_world_size: int = 10_000
    #: Largest ``max_concurrency`` (and the invoke connection pool).
    max_concurrency_limit: int = 1000
    #: Largest request body, bytes.
    max_body_bytes: int = 64 * 1024
    #: Attempts per rank when the payload does not say.
    max_attempts: int = 3
    #: A job not done after this many seconds is failed (its remaining ranks are not scheduled).
    job_deadline_s: float = 3600.0
    #: Invoke retries on service errors (5xx) and dropped connections, per attempt, with exponential
    #: backoff; throttling (429) is waited out up to the job deadline instead, uncounted.
    invoke_retries: int = 8
    #: After a restart, an attempt the previous coordinator left running that has not said it started
    #: (its ``running`` outcome object) this many seconds after it was sent is taken as never sent
    #: (lost), instead of being awaited until its deadline. Above Lambda's worst cold start.
    orphan_start_grace_s: float = 60.0
    #: Ranks per rank thread whose first attempts are written to S3 together, one PUT a wave, ahead
    #: of their sending (:mod:`.waves`). More: fewer PUTs during the fan-out; the price, paid on a
    #: restart only, is that ranks declared and not yet sent (up to about 1.5 waves) look in flight.
    declare_ahead: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise envconfig.SettingsError(f"{variable('port')} must be within 0..65535, got {self.port}")
        if self.rendezvous_endpoint:
            try:
                split_endpoint(self.rendezvous_endpoint)
            except ValueError:
                raise envconfig.SettingsError(
                    f"{variable('rendezvous_endpoint')} must be host:port, got {self.rendezvous_endpoint!r}") from None
        for name in ("max_world_size", "max_concurrency_limit", "max_body_bytes", "max_attempts", "declare_ahead"):
            if getattr(self, name) < 1:
                raise envconfig.SettingsError(f"{variable(name)} must be at least 1, got {getattr(self, name)}")
        if not is_loopback(self.host) and not self.api_token:
            raise envconfig.SettingsError(
                f"refusing to listen on {self.host} without an API token: set {variable('api_token')} "
                "(or listen on 127.0.0.1)")


def variable(field: str) -> str:
    """The variable that sets ``field``, for messages: ``COSMIC_COORDINATOR_MAX_WORLD_SIZE (formerly ...)``."""
    return envconfig.describe(CoordinatorSettings, field)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> CoordinatorSettings:
    return envconfig.load(CoordinatorSettings, None, environ, **overrides)
