"""The rendezvous task's Route 53 self-registration, against moto's EC2 and Route 53 on loopback.

A fake ECS task metadata endpoint (``http.server`` in a thread) hands out a task document that
points at an ENI created in moto's EC2; moto gives the ENI a public IP through an Elastic IP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.envconfig import SettingsError
from services.rendezvous.register import (
    RegisterSettings,
    RegistrationError,
    TaskNetwork,
    parse_task_document,
    register,
)
from tests.common import REPO


class MetadataEndpoint:
    """``$ECS_CONTAINER_METADATA_URI_V4`` on loopback; ``document`` is what ``/task`` returns."""

    def __init__(self) -> None:
        self.document: Any = {}
        self.requests: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.requests.append(self.path)
                body = json.dumps(endpoint.document).encode()
                self.send_response(200 if self.path.endswith("/task") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/v4/container-id"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def aws(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's server answers every service; the generic endpoint variable sends EC2 and Route 53 there."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def metadata(integration: None) -> Iterator[MetadataEndpoint]:
    with MetadataEndpoint() as endpoint:
        yield endpoint


@pytest.fixture
def ec2(aws: str) -> Any:
    import boto3

    return boto3.client("ec2")


@pytest.fixture
def route53(aws: str) -> Any:
    import boto3

    return boto3.client("route53")


@pytest.fixture
def zone(route53: Any) -> tuple[str, str]:
    """A fresh hosted zone per test (the moto server lives for the session) and a record name in it."""
    domain = f"{uuid.uuid4().hex[:10]}.example.com"
    zone_id = route53.create_hosted_zone(Name=domain, CallerReference=uuid.uuid4().hex)["HostedZone"]["Id"]
    return zone_id.removeprefix("/hostedzone/"), f"rendezvous.{domain}"


def _eni(ec2: Any, public: bool, private_ip: str | None = None) -> dict[str, str]:
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    eni = ec2.create_network_interface(SubnetId=subnet, **({"PrivateIpAddress": private_ip} if private_ip else {})
                                       )["NetworkInterface"]
    found = {"eni_id": eni["NetworkInterfaceId"], "private_ip": eni["PrivateIpAddress"], "mac": eni["MacAddress"]}
    if public:
        allocation = ec2.allocate_address(Domain="vpc")
        ec2.associate_address(AllocationId=allocation["AllocationId"], NetworkInterfaceId=eni["NetworkInterfaceId"])
        found["public_ip"] = allocation["PublicIp"]
    return found


def _attachments_document(eni_id: str) -> dict[str, Any]:
    return {"Cluster": "cosmic", "Attachments": [{"Type": "ElasticNetworkInterface", "Details": [
        {"Name": "subnetId", "Value": "subnet-1"}, {"Name": "networkInterfaceId", "Value": eni_id}]}]}


def _fargate_document(private_ip: str, mac: str) -> dict[str, Any]:
    """What Fargate's /task returns: no ENI id, only the container's address and MAC."""
    return {"Cluster": "cosmic", "Containers": [{"Name": "register", "Networks": [
        {"NetworkMode": "awsvpc", "IPv4Addresses": [private_ip], "MACAddress": mac, "AttachmentIndex": 0}]}]}


def _a_records(route53: Any, zone_id: str, name: str) -> list[dict[str, Any]]:
    records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return [r for r in records if r["Type"] == "A" and r["Name"].rstrip(".") == name]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.rendezvous.register", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_upserts_the_public_ip_idempotently(ec2: Any, route53: Any, zone: tuple[str, str],
                                            metadata: MetadataEndpoint) -> None:
    zone_id, name = zone
    eni = _eni(ec2, public=True)
    metadata.document = _attachments_document(eni["eni_id"])
    settings = RegisterSettings(zone_id=zone_id, record_name=name)
    environ = {"ECS_CONTAINER_METADATA_URI_V4": metadata.uri}

    assert register(settings, environ=environ) == eni["public_ip"]
    assert register(settings, environ=environ) == eni["public_ip"]

    records = _a_records(route53, zone_id, name)
    assert len(records) == 1
    assert records[0]["TTL"] == 30
    assert records[0]["ResourceRecords"] == [{"Value": eni["public_ip"]}]
    assert metadata.requests == ["/v4/container-id/task"] * 2


def test_fargate_document_and_ttl_from_environment(ec2: Any, route53: Any, zone: tuple[str, str],
                                                   metadata: MetadataEndpoint) -> None:
    zone_id, name = zone
    eni = _eni(ec2, public=True)
    metadata.document = _fargate_document(eni["private_ip"], eni["mac"])
    settings = RegisterSettings.from_env({"COSMIC_RENDEZVOUS_ZONE_ID": f"/hostedzone/{zone_id}",
                                          "COSMIC_RENDEZVOUS_RECORD_NAME": name,
                                          "COSMIC_RENDEZVOUS_RECORD_TTL": "7"})

    assert register(settings, environ={"ECS_CONTAINER_METADATA_URI_V4": metadata.uri}) == eni["public_ip"]

    (record,) = _a_records(route53, zone_id, name)
    assert record["TTL"] == 7
    assert record["ResourceRecords"] == [{"Value": eni["public_ip"]}]


def test_a_private_address_another_vpc_also_has_is_told_apart_by_the_mac(
        ec2: Any, route53: Any, zone: tuple[str, str], metadata: MetadataEndpoint) -> None:
    """A private address is unique within its VPC only (every test here makes its VPC with the same
    CIDR, and moto's server lives for the session, as an account's VPCs do): the Fargate document's
    MAC picks the task's interface among those with its address."""
    zone_id, name = zone
    other, eni = _eni(ec2, public=True, private_ip="10.0.1.250"), _eni(ec2, public=True, private_ip="10.0.1.250")
    metadata.document = _fargate_document(eni["private_ip"], eni["mac"])
    settings = RegisterSettings(zone_id=zone_id, record_name=name)

    assert register(settings, environ={"ECS_CONTAINER_METADATA_URI_V4": metadata.uri}) == eni["public_ip"]
    assert eni["public_ip"] != other["public_ip"]


def test_replacement_task_moves_the_record(ec2: Any, route53: Any, zone: tuple[str, str],
                                           metadata: MetadataEndpoint) -> None:
    zone_id, name = zone
    settings = RegisterSettings(zone_id=zone_id, record_name=name)
    environ = {"ECS_CONTAINER_METADATA_URI_V4": metadata.uri}
    old, new = _eni(ec2, public=True), _eni(ec2, public=True)
    for eni in (old, new):
        metadata.document = _attachments_document(eni["eni_id"])
        register(settings, environ=environ)

    (record,) = _a_records(route53, zone_id, name)
    assert record["ResourceRecords"] == [{"Value": new["public_ip"]}]


def test_no_public_ip_fails_unless_private_is_allowed(ec2: Any, route53: Any, zone: tuple[str, str],
                                                      metadata: MetadataEndpoint, aws: str) -> None:
    zone_id, name = zone
    eni = _eni(ec2, public=False)
    metadata.document = _attachments_document(eni["eni_id"])
    env = {**os.environ, "ECS_CONTAINER_METADATA_URI_V4": metadata.uri, "COSMIC_RENDEZVOUS_ZONE_ID": zone_id,
           "COSMIC_RENDEZVOUS_RECORD_NAME": name}

    refused = _run(env)
    assert refused.returncode == 1
    assert "register_failed" in refused.stderr and "has no public IP" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _a_records(route53, zone_id, name) == []

    allowed = _run(env, "--allow-private")
    assert allowed.returncode == 0, allowed.stderr
    assert "kind=private" in allowed.stderr
    (record,) = _a_records(route53, zone_id, name)
    assert record["ResourceRecords"] == [{"Value": eni["private_ip"]}]


@pytest.mark.integration
def test_missing_metadata_uri_exits_non_zero_with_a_clear_message() -> None:
    env = {key: value for key, value in os.environ.items() if key != "ECS_CONTAINER_METADATA_URI_V4"}
    env.update(COSMIC_RENDEZVOUS_ZONE_ID="Z123", COSMIC_RENDEZVOUS_RECORD_NAME="rendezvous.example.com")

    result = _run(env)

    assert result.returncode == 1
    assert "ECS_CONTAINER_METADATA_URI_V4 is not set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_missing_settings_exit_2_naming_the_variable() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("COSMIC_RENDEZVOUS_")}

    result = _run(env)

    assert result.returncode == 2
    assert "COSMIC_RENDEZVOUS_ZONE_ID is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_metadata_endpoint_is_a_registration_error() -> None:
    settings = RegisterSettings(zone_id="Z123", record_name="rendezvous.example.com", api_timeout=2)
    with pytest.raises(RegistrationError, match="cannot read task metadata"):
        register(settings, environ={"ECS_CONTAINER_METADATA_URI_V4": "http://127.0.0.1:9/v4/x"})


def test_parse_task_document_shapes() -> None:
    assert parse_task_document(_attachments_document("eni-1")).eni_id == "eni-1"
    assert parse_task_document(_fargate_document("10.0.0.5", "02:00")) == TaskNetwork(None, "10.0.0.5", "02:00")
    assert parse_task_document([]) == TaskNetwork()


@pytest.mark.parametrize("overrides", [{"record_ttl": -1}, {"api_timeout": 0}, {"zone_id": ""}])
def test_settings_are_checked(overrides: dict[str, Any]) -> None:
    values: dict[str, Any] = {"zone_id": "Z1", "record_name": "r.example.com", **overrides}
    with pytest.raises(SettingsError):
        RegisterSettings(**values)
