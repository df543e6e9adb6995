"""``cosmic deploy`` end to end, with no Docker daemon and no AWS account.

Every AWS API it calls (STS, EC2, Route 53, Secrets Manager, ECR, CloudFormation, ECS) is moto's
server on loopback, which also creates what the templates declare (buckets, repositories, roles,
the worker function, the ECS services). The smoke test's Lambda Invoke API is the local Lambda
runtime running the real worker handler, whose S3 is that same moto server, and its rendezvous
is a real server on loopback, whose address the test writes into Route 53 the way the rendezvous
task's register container does on AWS. The Docker steps cannot run here: the images are put into
moto's ECR under the tag ``cosmic deploy`` computes, and it runs with ``--no-build``; a run
without it must stop at the images step and say there is no Docker daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("yaml")  # services.deploy.templates reads the templates with it

import boto3

from services.contracts import split_endpoint
from services.deploy import images, templates
from services.deploy.settings import DeploySettings
from services.envconfig import SettingsError
from services.local.s3server import S3Server
from services.ports import free_port
from tests.common import CREDENTIALS, REPO
from tests.processes import rendezvous_process, runtime_process

ZONE = "cosmic.test."
DOMAIN = "rendezvous.cosmic.test"
PARTS = ("storage", "worker", "rendezvous", "coordinator")


@dataclass
class Cloud:
    """moto for AWS, the local runtime for Lambda, a rendezvous server; and ``cosmic deploy`` against them."""

    aws: str
    lambda_endpoint: str
    pairing_port: int
    zone_id: str

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.aws, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def env(self, **extra: str) -> dict[str, str]:
        base = {key: value for key, value in os.environ.items()
                if not key.startswith(("AWS_", "COSMIC_DEPLOY_", "DOCKER_"))}
        return {**base, **CREDENTIALS, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL": self.aws,
                "AWS_ENDPOINT_URL_LAMBDA": self.lambda_endpoint, "COSMIC_DEPLOY_POLL_S": "0.1",
                "DOCKER_HOST": "unix:///nonexistent/docker.sock", **extra}

    def deploy(self, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        arguments = ["--domain", DOMAIN, "--api-source-cidr", "198.51.100.7/32",
                     "--pairing-port", str(self.pairing_port), *options]
        return subprocess.run([sys.executable, "-m", "services.cli", "deploy", *arguments], cwd=REPO,
                              env=env or self.env(), capture_output=True, text=True, timeout=240)

    def register_rendezvous(self, address: str = "127.0.0.1") -> None:
        """What the rendezvous task's register container does as it starts."""
        self.client("route53").change_resource_record_sets(HostedZoneId=self.zone_id, ChangeBatch={"Changes": [{
            "Action": "UPSERT", "ResourceRecordSet": {"Name": DOMAIN, "Type": "A", "TTL": 30,
                                                      "ResourceRecords": [{"Value": address}]}}]})

    def push_images(self, tag: str) -> dict[str, str]:
        """Stand in for the build and push: a manifest per repository under ``tag``; returns the digests."""
        ecr, digests = self.client("ecr"), {}
        for target in images.TARGETS:
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                                   "digest": "sha256:" + target.encode().hex().ljust(64, "0")[:64]}, "layers": []}
            image = ecr.put_image(repositoryName=f"cosmic/{target}", imageManifest=json.dumps(manifest),
                                  imageTag=tag)["image"]
            digests[target] = image["imageId"]["imageDigest"]
        return digests

    def stack(self, part: str) -> dict[str, Any]:
        return dict(self.client("cloudformation").describe_stacks(StackName=f"cosmic-{part}")["Stacks"][0])


@pytest.fixture(scope="module")
def cloud(e2e: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """moto's server as the AWS account, the local runtime as its Lambda (running the real worker, for the
    smoke test's selftest) and a rendezvous server, for ``cosmic deploy`` to deploy into."""
    pytest.importorskip("moto")
    pytest.importorskip("docker")  # the deploy reports the SDK's version, even when it builds nothing
    pytest.importorskip("torch")
    pytest.importorskip("awslambdaric")
    folder = tmp_path_factory.mktemp("deploy")
    with S3Server(log_path=folder / "moto.log", module="tests.deploy.moto_server", cwd=REPO) as moto:
        runtime_env = {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": moto.endpoint, "COSMIC_WORKER_FUNCTION": "cosmic-worker",
                       "COSMIC_WORKER_SCRATCH_DIR": str(folder / "scratch")}
        runtime_options = ["--sandboxes", "2", "--timeout", "60"]
        with rendezvous_process(folder / "rendezvous.log") as rendezvous, \
                runtime_process(folder / "runtime.log", *runtime_options, env=runtime_env) as runtime:
            cloud = Cloud(moto.endpoint, runtime, split_endpoint(rendezvous)[1], zone_id="")
            zone = cloud.client("route53").create_hosted_zone(Name=ZONE, CallerReference="cosmic-deploy-test")
            cloud.zone_id = zone["HostedZone"]["Id"].rsplit("/", 1)[-1]
            yield cloud


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-4000:]
    return dict(json.loads(result.stdout))


def test_dry_run_needs_neither_docker_nor_an_account(cloud: Cloud) -> None:
    env = {key: value for key, value in cloud.env().items() if key not in CREDENTIALS}
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens: any call would fail
    result = cloud.deploy("--dry-run", "--json", env=env)
    report = _report(result)
    assert report["dry_run"] is True and report["image_tag"] == images.source_tag()
    plan = {item["step"]: item["plan"] for item in report["steps"]}
    assert list(plan)[::len(plan) - 1] == ["templates", "smoke test"]
    assert "parameters fit" in plan["templates"]
    assert "MemorySize=10240" in plan["worker stack"]
    assert f"PairingPort={cloud.pairing_port}" in plan["rendezvous stack"]
    assert f"docker SDK {__import__('docker').__version__}" in plan["images"]
    assert "dry run: nothing will be built" in result.stderr
    assert cloud.client("cloudformation").list_stacks()["StackSummaries"] == []


@pytest.mark.parametrize(("options", "named"), [
    (["--domain", ""], "COSMIC_DEPLOY_DOMAIN"),
    (["--api-source-cidr", "198.51.100.7/40"], "--api-source-cidr"),
    (["--worker-memory-mb", "20000"], "--worker-memory-mb"),
    (["--name-prefix", "Cosmic"], "--name-prefix"),
    (["--data-bucket", "Cosmic_Data"], "--data-bucket"),
])
def test_bad_settings_are_refused_before_any_step(cloud: Cloud, options: list[str], named: str) -> None:
    result = cloud.deploy("--dry-run", *options)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert "[1/" not in result.stderr


def test_without_a_docker_daemon_the_images_step_fails_and_says_why(cloud: Cloud) -> None:
    result = cloud.deploy()
    assert result.returncode == 1
    assert "step 'images' failed: no Docker daemon answers" in result.stderr, result.stderr[-3000:]
    assert "--no-build" in result.stderr and "Traceback" not in result.stderr
    # the steps before it are done, and stay done for the next run
    assert cloud.stack("storage")["StackStatus"] == "CREATE_COMPLETE"
    assert cloud.client("secretsmanager").describe_secret(SecretId="cosmic/coordinator-api-token")["ARN"]


def test_no_build_needs_the_images_in_ecr(cloud: Cloud) -> None:
    result = cloud.deploy("--no-build", "--image-tag", "not-pushed")
    assert result.returncode == 1
    assert "step 'images' failed: --no-build, but ECR has no :not-pushed of rendezvous, worker, coordinator" \
        in result.stderr, result.stderr[-3000:]


def test_both_names_must_be_in_the_hosted_zone(cloud: Cloud) -> None:
    result = cloud.deploy("--no-build", "--api-domain", "api.elsewhere.example.org")
    assert result.returncode == 1
    assert "step 'hosted zone' failed: --api-domain api.elsewhere.example.org is not inside hosted zone" \
        in result.stderr, result.stderr[-3000:]
    result = cloud.deploy("--no-build", "--domain", "rendezvous.elsewhere.example.org")
    assert "step 'hosted zone' failed: no public hosted zone in this account holds rendezvous.elsewhere" \
        in result.stderr, result.stderr[-3000:]


def test_deploy_creates_the_stacks_prints_the_endpoints_and_pairs_two_workers(cloud: Cloud) -> None:
    digests = cloud.push_images(images.source_tag())
    cloud.register_rendezvous()
    report = _report(cloud.deploy("--no-build", "--json"))

    assert report["stacks"] == {"cosmic-storage": "unchanged", "cosmic-worker": "created",
                                "cosmic-rendezvous": "created", "cosmic-coordinator": "created"}
    for part in PARTS:
        assert cloud.stack(part)["StackStatus"] == "CREATE_COMPLETE"
    assert report["rendezvous"] == f"{DOMAIN}:{cloud.pairing_port}"
    assert report["coordinator_url"] == "http://coordinator.cosmic.test:8000"
    assert report["worker_function"].endswith(":function:cosmic-worker")
    assert set(report["buckets"]) == {"model", "data", "state"} and all(report["buckets"].values())
    assert report["images"] == {target: f"123456789012.dkr.ecr.us-east-1.amazonaws.com/cosmic/{target}@{digest}"
                                for target, digest in digests.items()}
    # the stacks got what the steps found: the image digest, the default VPC, the zone, the secret
    worker = cloud.client("lambda").get_function(FunctionName="cosmic-worker")
    assert worker["Code"]["ImageUri"] == report["images"]["worker"]
    rendezvous = {p["ParameterKey"]: p["ParameterValue"] for p in cloud.stack("rendezvous")["Parameters"]}
    default_vpc = cloud.client("ec2").describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    assert rendezvous["VpcId"] == default_vpc["VpcId"] and rendezvous["HostedZoneId"] == cloud.zone_id
    coordinator = {p["ParameterKey"]: p["ParameterValue"] for p in cloud.stack("coordinator")["Parameters"]}
    assert coordinator["RendezvousEndpoint"] == report["rendezvous"]
    assert coordinator["ApiTokenSecretArn"].startswith("arn:aws:secretsmanager:")
    assert coordinator["ApiRecordName"] == "coordinator.cosmic.test" and coordinator["HostedZoneId"] == cloud.zone_id

    # the smoke test ran the real worker twice, through S3 and a link punched via the rendezvous
    ranks = report["smoke_test"]
    assert [rank["rank"] for rank in ranks] == [0, 1]
    assert ranks[0]["local"] == ranks[1]["peer"] and ranks[1]["local"] == ranks[0]["peer"]
    assert all(rank["s3_round_trip_ms"] > 0 for rank in ranks)
    # the users' payload, pointed at the deployed buckets
    payload = json.loads((REPO / "examples" / "payload.json").read_text())
    assert report["payload"] == {**payload, "bucket": report["buckets"]["model"],
                                 "data_bucket": report["buckets"]["data"]}


def test_a_second_deploy_changes_nothing(cloud: Cloud) -> None:
    before = {part: cloud.stack(part).get("LastUpdatedTime") for part in PARTS}
    result = cloud.deploy("--no-build", "--json")
    report = _report(result)
    assert set(report["stacks"].values()) == {"unchanged"}
    assert "cosmic/coordinator-api-token exists: kept" in result.stderr
    assert "rendezvous, worker, coordinator already in ECR" in result.stderr
    assert {part: cloud.stack(part).get("LastUpdatedTime") for part in PARTS} == before
    assert len(report["smoke_test"]) == 2


def test_a_changed_setting_updates_only_its_stack(cloud: Cloud) -> None:
    report = _report(cloud.deploy("--no-build", "--json", "--worker-memory-mb", "3008"))
    assert report["stacks"] == {"cosmic-storage": "unchanged", "cosmic-worker": "updated",
                                "cosmic-rendezvous": "unchanged", "cosmic-coordinator": "unchanged"}
    assert cloud.stack("worker")["StackStatus"] == "UPDATE_COMPLETE"
    assert cloud.client("lambda").get_function_configuration(FunctionName="cosmic-worker")["MemorySize"] == 3008


def test_a_smoke_test_without_a_registered_rendezvous_fails_naming_its_step(cloud: Cloud) -> None:
    route53 = cloud.client("route53")
    route53.change_resource_record_sets(HostedZoneId=cloud.zone_id, ChangeBatch={"Changes": [{
        "Action": "DELETE", "ResourceRecordSet": {"Name": DOMAIN, "Type": "A", "TTL": 30,
                                                  "ResourceRecords": [{"Value": "127.0.0.1"}]}}]})
    started = time.monotonic()
    result = cloud.deploy("--no-build", "--worker-memory-mb", "3008", env=cloud.env(COSMIC_DEPLOY_RECORD_WAIT_S="1"))
    assert result.returncode == 1 and time.monotonic() - started < 60
    assert f"step 'smoke test' failed: no A record {DOMAIN}" in result.stderr, result.stderr[-3000:]
    assert "waiting for the rendezvous task to register" in result.stderr
    cloud.register_rendezvous()


def test_existing_buckets_are_used_instead_of_new_ones(cloud: Cloud) -> None:
    """Users keep their partitions and model folder where they are (cosmicai-data in their payloads)."""
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket="cosmicai-data")
    created = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    report = _report(cloud.deploy("--no-build", "--json", "--worker-memory-mb", "3008", "--model-bucket",
                                  "cosmicai-data", "--data-bucket", "cosmicai-data"))
    assert report["buckets"]["model"] == report["buckets"]["data"] == "cosmicai-data"
    assert report["stacks"]["cosmic-storage"] == "updated" and report["stacks"]["cosmic-worker"] == "updated"
    worker = {p["ParameterKey"]: p["ParameterValue"] for p in cloud.stack("worker")["Parameters"]}
    assert worker["DataBucketName"] == worker["ModelBucketName"] == worker["ResultBucketName"] == "cosmicai-data"
    assert report["payload"]["bucket"] == report["payload"]["data_bucket"] == "cosmicai-data"
    assert {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]} <= created, "no bucket made for them"
    assert len(report["smoke_test"]) == 2, "the selftest wrote to and read from cosmicai-data"


def test_parameters_are_checked_against_the_templates() -> None:
    worker = templates.load("worker")
    good = {"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/cosmic/worker@sha256:" + "0" * 64,
            "ModelBucketName": "m", "DataBucketName": "d", "ResultBucketName": "d"}
    worker.check(good)
    worker.check({**good, "ImageUri": None})  # not known yet: checked when it is
    with pytest.raises(templates.TemplateError, match="MemorySize='99999' is above MaxValue 10240"):
        worker.check({**good, "MemorySize": "99999"})
    with pytest.raises(templates.TemplateError, match="needs a value for ImageUri"):
        worker.check({key: value for key, value in good.items() if key != "ImageUri"})
    with pytest.raises(templates.TemplateError, match=r"declares no parameter Memory$"):
        worker.check({**good, "Memory": "1024"})
    with pytest.raises(templates.TemplateError, match="does not match AllowedPattern"):
        worker.check({**good, "ImageUri": "docker.io/cosmic/worker:latest"})


def test_settings_name_the_variable_to_fix() -> None:
    settings = DeploySettings.from_env({"COSMIC_DEPLOY_DOMAIN": DOMAIN, "COSMIC_DEPLOY_API_SOURCE_CIDR": "0.0.0.0/0",
                                        "COSMIC_DEPLOY_SUBNET_IDS": "subnet-a, subnet-b",
                                        "COSMIC_DEPLOY_VPC_ID": "vpc-1", "COSMIC_DEPLOY_BUILD": "no"})
    assert settings.subnets == ["subnet-a", "subnet-b"] and settings.build is False
    assert settings.stack_name("worker") == "cosmic-worker"
    with pytest.raises(SettingsError, match=r"COSMIC_DEPLOY_SUBNET_IDS.*without --vpc-id"):
        DeploySettings.from_env({"COSMIC_DEPLOY_DOMAIN": DOMAIN, "COSMIC_DEPLOY_API_SOURCE_CIDR": "0.0.0.0/0",
                                 "COSMIC_DEPLOY_SUBNET_IDS": "subnet-a"})


def test_the_worker_image_is_chosen_and_the_lean_one_tagged_apart() -> None:
    required = {"COSMIC_DEPLOY_DOMAIN": DOMAIN, "COSMIC_DEPLOY_API_SOURCE_CIDR": "0.0.0.0/0"}
    assert DeploySettings.from_env(required).worker_image == "worker"  # script mode needs torch: the default
    lean = DeploySettings.from_env({**required, "COSMIC_DEPLOY_WORKER_IMAGE": "worker-lean"})
    assert [images.build_target(role, lean.worker_image) for role in images.TARGETS] == \
        ["rendezvous", "worker-lean", "coordinator"]
    assert images.target_tag("worker-lean", "src-1") == "src-1-lean" and images.target_tag("worker", "src-1") == "src-1"
    with pytest.raises(SettingsError, match=r"COSMIC_DEPLOY_WORKER_IMAGE.*'slim' must be one of worker, worker-lean"):
        DeploySettings.from_env({**required, "COSMIC_DEPLOY_WORKER_IMAGE": "slim"})


def test_the_image_tag_follows_what_the_images_are_built_from(tmp_path: Path) -> None:
    for name in ("Dockerfile", "pyproject.toml", "README.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "a.py").write_text("a = 1\n")
    tag = images.source_tag(tmp_path)
    assert tag.startswith("src-") and len(tag) == 16
    (tmp_path / "README.md").write_text("not copied into any image")
    (tmp_path / "services" / "__pycache__").mkdir()
    (tmp_path / "services" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert images.source_tag(tmp_path) == tag
    (tmp_path / "services" / "a.py").write_text("a = 2\n")
    assert images.source_tag(tmp_path) != tag


def test_step_functions_pipeline_is_deployed_on_request(cloud: Cloud) -> None:
    report = _report(cloud.deploy("--no-build", "--json", "--worker-memory-mb", "3008", "--stepfunctions"))
    assert report["stacks"]["cosmic-stepfunctions"] == "created"
    assert report["state_machine"].endswith(":stateMachine:cosmic-inference")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cloud.stack("stepfunctions")["Outputs"]}
    plan = cloud.client("lambda").get_function(FunctionName=outputs["PlanFunctionArn"])
    assert plan["Code"]["ImageUri"] == report["images"]["coordinator"]


def test_build_and_push_streams_report_the_engines_errors() -> None:
    """The Engine API answers 200 and puts a failure inside the stream; it must not pass as success."""
    seen: list[str] = []
    images._consume([{"stream": "Step 1/9 : FROM python:3.12.12-slim-bookworm"}, {"stream": " ---> 1a2b\n"},
                     {"status": "Pushed", "id": "5f70bf18a086"}], "build worker", seen.append)
    assert seen == ["build worker: Step 1/9 : FROM python:3.12.12-slim-bookworm", "build worker: Pushed"]
    with pytest.raises(images.ImageError, match="push worker: denied: Your authorization token has expired"):
        images._consume([{"status": "Preparing"}, {"errorDetail": {"message": "denied: Your authorization token has "
                                                                              "expired"}, "error": "denied"}],
                        "push worker", seen.append)
    with pytest.raises(images.ImageError, match="build coordinator: The command '/bin/sh -c pip install' returned"):
        images._consume([{"error": "The command '/bin/sh -c pip install' returned a non-zero code: 1"}],
                        "build coordinator", seen.append)


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_the_sdk_builds_the_rendezvous_target_where_a_daemon_answers() -> None:
    """The build cosmic deploy runs (Engine API, classic builder, linux/amd64); needs a Docker daemon."""
    try:
        client = images.docker_client()
    except images.ImageError as exc:
        pytest.skip(str(exc))
    lines: list[str] = []
    local = images.build_image(client, "rendezvous", "test", lines.append)
    assert client.images.get(local).attrs["Architecture"] == "amd64"
    assert any(line.startswith("build rendezvous: Step ") for line in lines)
