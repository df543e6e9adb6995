"""What ``cosmic deploy`` deploys where: argument > ``COSMIC_DEPLOY_<FIELD>`` > default.

The account and region are boto3's own (``AWS_PROFILE``, ``AWS_REGION`` and the rest of the
standard variables); nothing here repeats them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services import envconfig

ENV_PREFIX = "COSMIC_DEPLOY_"
#: The worker's two images (Dockerfile targets): with torch, and without (native mode on exports only).
WORKER_IMAGES = ("worker", "worker-lean")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{1,20}$")  # storage.yaml's NamePrefix: bucket and repository names
_DOMAIN = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\.?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a Docker/ECR image tag


@dataclass(frozen=True)
class DeploySettings:
    """One deployment. Every field is ``COSMIC_DEPLOY_<FIELD>`` or the matching ``--option``."""

    #: Lowercase prefix of stack, bucket, repository and function names (``cosmic-storage`` ...).
    name_prefix: str = "cosmic"
    #: Host name workers find the rendezvous server by, e.g. ``rendezvous.example.com``; the
    #: rendezvous task keeps its A record pointed at itself. Required.
    domain: str = ""
    #: Host name of the coordinator's API, kept pointed at its task the same way; empty:
    #: ``coordinator.`` and the hosted zone's name.
    api_domain: str = ""
    #: Route 53 hosted zone of both names; empty: the zone whose name is the longest suffix of ``domain``.
    hosted_zone_id: str = ""
    #: VPC of the two Fargate services; empty: the account's default VPC.
    vpc_id: str = ""
    #: Comma-separated public subnets; empty: the VPC's subnets that give instances public IPs.
    subnet_ids: str = ""
    #: Buckets that already hold the model folder and the partitions (e.g. ``cosmicai-data`` for
    #: both, as the users' payloads name it); empty: the storage stack creates them.
    model_bucket: str = ""
    data_bucket: str = ""
    #: Who may call the coordinator's API (port 8000; the token is needed too), e.g. ``198.51.100.7/32``.
    api_source_cidr: str = ""
    #: Who may reach the pairing port; open by default: Lambda's addresses cannot be predicted.
    pairing_source_cidr: str = "0.0.0.0/0"
    #: The rendezvous server's pairing port.
    pairing_port: int = 10000
    #: The worker Lambda's memory (MB; CPU comes in proportion), timeout (s) and /tmp (MB).
    worker_memory_mb: int = 10240
    worker_timeout_s: int = 900
    worker_ephemeral_mb: int = 512
    #: The worker's Dockerfile target: ``worker`` (torch: native and ``script`` modes) or
    #: ``worker-lean`` (no torch: native mode on exported models, a cold start 1-2 s shorter).
    worker_image: str = "worker"
    #: Image tag to push and deploy; empty: ``src-`` and a digest of what the images are built from,
    #: so an unchanged tree is neither rebuilt nor redeployed.
    image_tag: str = ""
    #: Build and push images ECR lacks (off: they must be in ECR already, pushed by CI say).
    build: bool = True
    #: Also deploy the Step Functions pipeline (``infra/stepfunctions.yaml``).
    stepfunctions: bool = False
    #: Finish with the two-rank selftest through the deployed rendezvous server.
    smoke_test: bool = True
    #: Seconds between polls of CloudFormation and Route 53 while waiting.
    poll_s: float = 5.0
    #: Seconds one stack may take to create or update.
    stack_timeout_s: float = 3600.0
    #: Seconds the smoke test waits for the rendezvous task to register its address.
    record_wait_s: float = 600.0

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> envconfig.SettingsError:
            return envconfig.SettingsError(f"--{field.replace('_', '-')} ({envconfig.env_name(ENV_PREFIX, field)}): "
                                           f"{why}")

        if not _PREFIX.match(self.name_prefix):
            raise bad("name_prefix", f"{self.name_prefix!r} must be 2-21 lowercase letters, digits or '-', "
                                     "starting with a letter")
        if not self.domain:
            raise bad("domain", "required: the rendezvous host name, e.g. rendezvous.example.com")
        for field in ("domain", "api_domain"):
            value = getattr(self, field)
            if value and not _DOMAIN.match(value):
                raise bad(field, f"{value!r} is not a host name")
        for field in ("model_bucket", "data_bucket"):
            value = getattr(self, field)
            if value and not _BUCKET.match(value):
                raise bad(field, f"{value!r} is not an S3 bucket name")
        if not self.api_source_cidr:
            raise bad("api_source_cidr", "required: who may call the coordinator, e.g. your address as "
                                         "$(curl -s https://checkip.amazonaws.com)/32")
        for field in ("api_source_cidr", "pairing_source_cidr"):
            value = getattr(self, field)
            try:
                ipaddress.IPv4Network(value)
            except ValueError as exc:
                raise bad(field, f"{value!r} is not an IPv4 CIDR block: {exc}") from None
        if self.subnet_ids and not self.vpc_id:
            raise bad("subnet_ids", "given without --vpc-id: name the VPC the subnets are in")
        if not 1024 <= self.pairing_port <= 65535 or self.pairing_port == 10001:
            raise bad("pairing_port", f"{self.pairing_port} must be within 1024..65535 and not the health port 10001")
        limits = {"worker_memory_mb": (128, 10240), "worker_timeout_s": (1, 900), "worker_ephemeral_mb": (512, 10240)}
        for field, (low, high) in limits.items():
            if not low <= getattr(self, field) <= high:
                raise bad(field, f"{getattr(self, field)} is outside Lambda's {low}..{high}")
        if self.worker_image not in WORKER_IMAGES:
            raise bad("worker_image", f"{self.worker_image!r} must be one of {', '.join(WORKER_IMAGES)}")
        if self.image_tag and not _TAG.match(self.image_tag):
            raise bad("image_tag", f"{self.image_tag!r} is not an image tag")
        for field in ("poll_s", "stack_timeout_s", "record_wait_s"):
            if not getattr(self, field) > 0:
                raise bad(field, "must be positive")

    @property
    def subnets(self) -> list[str]:
        return [subnet.strip() for subnet in self.subnet_ids.split(",") if subnet.strip()]

    def stack_name(self, part: str) -> str:
        return f"{self.name_prefix}-{part}"

    @property
    def worker_function(self) -> str:
        return f"{self.name_prefix}-worker"

    @property
    def token_secret_name(self) -> str:
        return f"{self.name_prefix}/coordinator-api-token"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> DeploySettings:
        return envconfig.load(cls, ENV_PREFIX, environ, **overrides)
