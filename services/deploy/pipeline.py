"""The steps of ``cosmic deploy``, in order, each idempotent and each named in its errors.

A second run finds everything in place: the API token secret exists, ECR holds the images under
the source digest's tag, every change set is empty, and only the smoke test runs again. A dry run
goes through the same steps doing what needs neither a Docker daemon nor an AWS account (reading
and checking the templates and the parameters known without an account, the image tag, the
Dockerfile's targets) and says what it would do for the rest.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from services import __version__
from services.contracts import split_endpoint
from services.deploy import images, smoke, templates
from services.deploy.errors import DeployError, StepFailed
from services.deploy.settings import DeploySettings
from services.deploy.stacks import StackDeployer, StackResult


@dataclass
class Deployment:
    """What the steps find and make, for the steps after them and for the final report."""

    settings: DeploySettings
    dry_run: bool
    progress: Callable[[str], None]
    session: Any = None  # boto3.Session, not made in a dry run
    account: str | None = None
    region: str | None = None
    vpc_id: str | None = None
    vpc_cidr: str | None = None
    subnets: list[str] = field(default_factory=list)
    zone_id: str | None = None
    token_secret_arn: str | None = None
    image_tag: str = ""
    images: dict[str, images.ImageRef] = field(default_factory=dict)
    stacks: dict[str, StackResult] = field(default_factory=dict)
    templates: dict[str, templates.Template] = field(default_factory=dict)
    zone_name: str | None = None
    smoke: list[smoke.RankCheck] = field(default_factory=list)
    done: list[tuple[str, str]] = field(default_factory=list)  # (step, what happened or would)

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def output(self, part: str, key: str) -> str | None:
        """An output of an earlier stack (None in a dry run, where no stack exists)."""
        if part not in self.stacks:
            return None
        value = self.stacks[part].outputs.get(key)
        if value is None:
            raise RuntimeError(f"the {self.settings.stack_name(part)} stack has no output {key}")
        return value


# ---------------------------------------------------------------------------------------------
# the steps: each returns one line saying what it did (or, in a dry run, what it would do)
# ---------------------------------------------------------------------------------------------


def check_templates(d: Deployment) -> str:
    names = ["storage", "worker", "rendezvous", "coordinator"] + (["stepfunctions"] if d.settings.stepfunctions else [])
    d.templates = {name: templates.load(name) for name in names}
    dockerfile = (images.ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.MULTILINE | re.IGNORECASE))
    wanted = [images.build_target(role, d.settings.worker_image) for role in images.TARGETS]
    missing = [target for target in wanted if target not in stages]
    if missing:
        raise templates.TemplateError(f"the Dockerfile has no stage {', '.join(missing)}", template="Dockerfile")
    for name in names:  # what is known before any stack exists; the rest is checked as it becomes known
        d.templates[name].check(stack_parameters(d, name))
    return f"{len(names)} templates and the Dockerfile's {len(images.TARGETS)} targets read; parameters fit"


def find_account(d: Deployment) -> str:
    if d.dry_run:
        return "would use the account and region of the current AWS credentials"
    import boto3

    d.session = boto3.Session()
    d.region = d.session.region_name
    if not d.region:
        raise NoRegionError()
    d.account = str(d.client("sts").get_caller_identity()["Account"])
    return f"account {d.account}, region {d.region}"


def find_network(d: Deployment) -> str:
    s = d.settings
    if d.dry_run:
        return (f"would use VPC {s.vpc_id}" if s.vpc_id else "would use the default VPC") + (
            f" and subnets {s.subnet_ids}" if s.subnets else " and its subnets that assign public IPs")
    ec2 = d.client("ec2")
    if s.vpc_id:
        vpcs = ec2.describe_vpcs(VpcIds=[s.vpc_id])["Vpcs"]
    else:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise RuntimeError("the account has no default VPC in this region: name one with --vpc-id and --subnet-ids")
    d.vpc_id, d.vpc_cidr = vpcs[0]["VpcId"], vpcs[0]["CidrBlock"]
    if s.subnets:
        found = ec2.describe_subnets(SubnetIds=s.subnets)["Subnets"]
        outside = [subnet["SubnetId"] for subnet in found if subnet["VpcId"] != d.vpc_id]
        if outside:
            raise RuntimeError(f"subnets {', '.join(outside)} are not in {d.vpc_id}")
        d.subnets = s.subnets
    else:
        found = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [d.vpc_id]}])["Subnets"]
        d.subnets = sorted(subnet["SubnetId"] for subnet in found if subnet.get("MapPublicIpOnLaunch"))
        if not d.subnets:
            raise RuntimeError(f"{d.vpc_id} has no subnet that assigns public IPs: name public subnets with "
                               "--subnet-ids (the rendezvous task needs a public address)")
    return f"{d.vpc_id} ({d.vpc_cidr}), subnets {', '.join(d.subnets)}"


def find_zone(d: Deployment) -> str:
    s = d.settings
    domain = s.domain.rstrip(".").lower() + "."
    if d.dry_run:
        return f"would use hosted zone {s.hosted_zone_id}" if s.hosted_zone_id else \
            f"would find the public hosted zone of {domain}"
    route53 = d.client("route53")
    if s.hosted_zone_id:
        zone = route53.get_hosted_zone(Id=s.hosted_zone_id)["HostedZone"]
        if not _in_zone(domain, zone["Name"]):
            raise RuntimeError(f"{domain} is not inside hosted zone {s.hosted_zone_id} ({zone['Name']})")
    else:
        zones = [zone for page in route53.get_paginator("list_hosted_zones").paginate()
                 for zone in page["HostedZones"]
                 if not zone.get("Config", {}).get("PrivateZone") and _in_zone(domain, zone["Name"])]
        if not zones:
            raise RuntimeError(f"no public hosted zone in this account holds {domain}: create one, or name it "
                               "with --hosted-zone-id")
        zone = max(zones, key=lambda z: len(z["Name"]))
    d.zone_id, d.zone_name = zone["Id"].rsplit("/", 1)[-1], zone["Name"].lower()
    api_domain = api_record_name(d)
    if not (api_domain + ".").endswith("." + d.zone_name):
        raise RuntimeError(f"--api-domain {api_domain} is not inside hosted zone {d.zone_id} ({zone['Name']})")
    return f"{d.zone_id} ({zone['Name']}), for {domain.rstrip('.')} and {api_domain}"


def _in_zone(name: str, zone: str) -> bool:
    """Whether the fully qualified ``name`` (trailing dot) is the zone's apex or inside it."""
    zone = zone.lower()
    return name == zone or name.endswith("." + zone)


def api_record_name(d: Deployment) -> str | None:
    """The coordinator's host name: ``--api-domain``, or ``coordinator.`` in the zone (None until it is found)."""
    if d.settings.api_domain:
        return d.settings.api_domain.rstrip(".").lower()
    return f"coordinator.{d.zone_name.rstrip('.')}" if d.zone_name else None


def ensure_token(d: Deployment) -> str:
    name = d.settings.token_secret_name
    if d.dry_run:
        return f"would create the secret {name} with a random token unless it exists"
    manager = d.client("secretsmanager")
    try:
        d.token_secret_arn = manager.describe_secret(SecretId=name)["ARN"]
        return f"{name} exists: kept"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    d.token_secret_arn = manager.create_secret(
        Name=name, SecretString=secrets.token_urlsafe(32),
        Description="Bearer token of the Cosmic Rendezvous coordinator's API (COSMIC_COORDINATOR_API_TOKEN)")["ARN"]
    return f"{name} created (read it with: aws secretsmanager get-secret-value --secret-id {name})"


def deploy_stack(part: str) -> Callable[[Deployment], str]:
    def step(d: Deployment) -> str:
        name, template = d.settings.stack_name(part), d.templates[part]
        parameters = stack_parameters(d, part)
        template.check(parameters)
        if d.dry_run:
            shown = ", ".join(f"{key}={value if value is not None else '<found at deploy time>'}"
                              for key, value in sorted(parameters.items()))
            return f"would create or update {name} from infra/{part}.yaml with {shown}"
        deployer = StackDeployer(d.client("cloudformation"), lambda line: d.progress(f"  {line}"), d.settings.poll_s,
                                 d.settings.stack_timeout_s, tags={"cosmic:prefix": d.settings.name_prefix,
                                                                   "cosmic:version": __version__})
        d.stacks[part] = result = deployer.deploy(name, template.body, {k: v for k, v in parameters.items()
                                                                         if v is not None})
        return f"{name} {result.action}"
    return step


def push_images(d: Deployment) -> str:
    d.image_tag = d.settings.image_tag or images.source_tag()
    targets = {role: images.build_target(role, d.settings.worker_image) for role in images.TARGETS}
    tags = {role: images.target_tag(target, d.image_tag) for role, target in targets.items()}
    if d.dry_run:
        if not d.settings.build:
            return f"would check that ECR holds {', '.join(targets.values())} as :{d.image_tag} (--no-build)"
        return (f"would build {', '.join(targets.values())} ({images.PLATFORM}) with the docker SDK "
                f"{images.docker_sdk_version()} and push them as :{d.image_tag} unless ECR has them")
    ecr = d.client("ecr")
    repositories = {role: d.output("storage", f"{role.capitalize()}RepositoryUri") or "" for role in images.TARGETS}
    digests = {role: images.find_image(ecr, repositories[role], tags[role]) for role in images.TARGETS}
    missing = [role for role, digest in digests.items() if digest is None]
    if missing and not d.settings.build:
        raise images.ImageError(f"--no-build, but ECR has no :{d.image_tag} of "
                                f"{', '.join(targets[role] for role in missing)}")
    if missing:
        client = images.docker_client()
        credentials = images.ecr_credentials(ecr)
        client.login(username=credentials["username"], password=credentials["password"],
                     registry=credentials["serveraddress"])
        for role in missing:
            local = images.build_image(client, targets[role], tags[role], lambda line: d.progress(f"  {line}"))
            images.push_image(client, local, repositories[role], tags[role], credentials,
                              lambda line: d.progress(f"  {line}"))
            digests[role] = images.find_image(ecr, repositories[role], tags[role])
            if digests[role] is None:
                raise images.ImageError(f"ECR has no {repositories[role]}:{tags[role]} after the push")
    d.images = {role: images.ImageRef(targets[role], repositories[role], tags[role], digest or "")
                for role, digest in digests.items()}
    built = [targets[role] for role in missing]
    kept = [targets[role] for role in images.TARGETS if role not in missing]
    return (f"built and pushed {', '.join(built)}" if built else "") + ("; " if built and kept else "") + (
        f"{', '.join(kept)} already in ECR" if kept else "") + f" (:{d.image_tag})"


def run_smoke_test(d: Deployment) -> str:
    if d.dry_run:
        return f"would invoke {d.settings.worker_function} twice in selftest mode, pairing through the rendezvous"
    host, port = split_endpoint(d.output("rendezvous", "Endpoint") or "")
    address = smoke.wait_for_record(d.client("route53"), d.zone_id or "", host, d.settings.record_wait_s,
                                    d.settings.poll_s, d.progress)
    d.smoke = smoke.run(d.output("worker", "FunctionName") or d.settings.worker_function,
                        d.settings.worker_timeout_s, d.output("storage", "DataBucketName") or "", f"{address}:{port}")
    return "; ".join(f"rank {c.rank}: S3 {c.s3_round_trip_ms:.0f} ms, paired in {c.pair_ms:.0f} ms, "
                     f"saw itself as {c.local} and its peer as {c.peer}" for c in d.smoke)


def stack_parameters(d: Deployment, part: str) -> dict[str, str | None]:
    """The parameters of one stack; None for those only an earlier step can know."""
    s = d.settings
    image = {target: ref.uri for target, ref in d.images.items()}
    if part == "storage":
        return {"NamePrefix": s.name_prefix, "ExistingModelBucket": s.model_bucket, "ExistingDataBucket": s.data_bucket}
    buckets = {"ModelBucketName": d.output("storage", "ModelBucketName"),
               "DataBucketName": d.output("storage", "DataBucketName"),
               "StateBucketName": d.output("storage", "StateBucketName")}
    if part == "worker":  # the state bucket is the coordinator's alone: the workers' markers are under results
        inputs = {name: value for name, value in buckets.items() if name != "StateBucketName"}
        return {"FunctionName": s.worker_function, "ImageUri": image.get("worker"), **inputs,
                "ResultBucketName": buckets["DataBucketName"], "MemorySize": str(s.worker_memory_mb),
                "Timeout": str(s.worker_timeout_s), "EphemeralStorage": str(s.worker_ephemeral_mb)}
    if part == "rendezvous":
        return {"ImageUri": image.get("rendezvous"), "VpcId": d.vpc_id, "VpcCidr": d.vpc_cidr,
                "SubnetIds": ",".join(d.subnets) or None, "PairingSourceCidr": s.pairing_source_cidr,
                "PairingPort": str(s.pairing_port), "HostedZoneId": d.zone_id or (s.hosted_zone_id or None),
                "RecordName": s.domain.rstrip(".")}
    if part == "coordinator":
        return {"ImageUri": image.get("coordinator"), "ClusterArn": d.output("rendezvous", "ClusterName"),
                "VpcId": d.vpc_id, "SubnetIds": ",".join(d.subnets) or None, "ApiSourceCidr": s.api_source_cidr,
                "HostedZoneId": d.zone_id or (s.hosted_zone_id or None), "ApiRecordName": api_record_name(d),
                "ApiTokenSecretArn": d.token_secret_arn, "RendezvousEndpoint": d.output("rendezvous", "Endpoint"),
                **buckets, "WorkerFunctionName": s.worker_function}
    if part == "stepfunctions":
        return {"StateMachineName": f"{s.name_prefix}-inference", "CoordinatorImageUri": image.get("coordinator"),
                "WorkerFunctionArn": d.output("worker", "FunctionArn"), "StateBucketName": buckets["StateBucketName"],
                "DataBucketName": buckets["DataBucketName"]}
    raise KeyError(part)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Deployment], str]


def steps(settings: DeploySettings) -> list[Step]:
    chosen = [Step("templates", check_templates), Step("account", find_account), Step("network", find_network),
              Step("hosted zone", find_zone), Step("api token", ensure_token),
              Step("storage stack", deploy_stack("storage")), Step("images", push_images),
              Step("worker stack", deploy_stack("worker")), Step("rendezvous stack", deploy_stack("rendezvous")),
              Step("coordinator stack", deploy_stack("coordinator"))]
    if settings.stepfunctions:
        chosen.append(Step("step functions stack", deploy_stack("stepfunctions")))
    if settings.smoke_test:
        chosen.append(Step("smoke test", run_smoke_test))
    return chosen


_EXPECTED = (BotoCoreError, ClientError, DeployError, RuntimeError, OSError, ValueError)


def deploy(settings: DeploySettings, dry_run: bool, progress: Callable[[str], None]) -> Deployment:
    """Run every step in order; the first failure stops the run with a StepFailed naming its step."""
    d = Deployment(settings, dry_run, progress)
    chosen = steps(settings)
    for number, step in enumerate(chosen, 1):
        progress(f"[{number}/{len(chosen)}] {step.name}")
        started = time.monotonic()
        try:
            what = step.run(d)
        except NoCredentialsError:
            raise StepFailed(step.name, "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                                         "AWS_SECRET_ACCESS_KEY (--dry-run needs none)") from None
        except NoRegionError:
            raise StepFailed(step.name, "no AWS region: set AWS_REGION") from None
        except _EXPECTED as exc:
            raise StepFailed(step.name, str(exc) or type(exc).__name__) from exc
        elapsed = time.monotonic() - started
        d.done.append((step.name, what))
        progress(f"[{number}/{len(chosen)}] {step.name}: " + ("planned" if dry_run else f"{what} ({elapsed:.1f} s)"))
    return d
