"""Point a Route 53 A record at this ECS task's public address, once, then exit.

Runs as a one-shot container next to the rendezvous server (``infra/rendezvous.yaml``):
``python -m services.rendezvous.register``. Workers reach the server by name, and a Fargate
task's public IP changes with every task, so each new task claims the name for itself:

1. the ECS task metadata endpoint (``$ECS_CONTAINER_METADATA_URI_V4/task``) names the task's
   network interface (an ``Attachments`` entry's ``networkInterfaceId``) or, on Fargate, only its
   private address and MAC (``Containers[].Networks[]``);
2. ``ec2:DescribeNetworkInterfaces`` gives that interface's public IP;
3. ``route53:ChangeResourceRecordSets`` UPSERTs the A record with a short TTL (idempotent).

The server never imports this module (nor boto3). Settings, as everywhere, are argument >
``COSMIC_RENDEZVOUS_<FIELD>`` > default. ``--allow-private`` falls back to the private address
when the interface has no public one (a test double, or a deliberately private deployment).
Exit status: 0 registered, 1 registration failed, 2 bad settings; the reason is one log line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services import envconfig, logs
from services.logs import event
from services.rendezvous.config import SERVER_ENV_PREFIX
from services.rendezvous.errors import RegistrationError

ENV_PREFIX = SERVER_ENV_PREFIX  # the server's: one name space for the rendezvous task's settings
METADATA_ENV = "ECS_CONTAINER_METADATA_URI_V4"

log = logging.getLogger("cosmic.rendezvous.register")


@dataclass(frozen=True)
class RegisterSettings:
    """What ``register`` writes where (``COSMIC_RENDEZVOUS_ZONE_ID`` and so on)."""

    #: Route 53 hosted zone id (``Z0123...``), with or without the ``/hostedzone/`` prefix.
    zone_id: str = ""
    #: Fully qualified record name, e.g. ``rendezvous.example.com``.
    record_name: str = ""
    #: Seconds resolvers may cache the address; short, so a replacement task is found quickly.
    record_ttl: int = 30
    #: Seconds each call (metadata endpoint, EC2, Route 53) may take.
    api_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.zone_id:
            raise envconfig.SettingsError(f"{envconfig.env_name(ENV_PREFIX, 'zone_id')} is required")
        if not self.record_name:
            raise envconfig.SettingsError(f"{envconfig.env_name(ENV_PREFIX, 'record_name')} is required")
        if not 0 <= self.record_ttl <= 2_147_483_647:
            raise envconfig.SettingsError(f"record_ttl must be within 0..2147483647, got {self.record_ttl}")
        if not self.api_timeout > 0:
            raise envconfig.SettingsError(f"api_timeout must be positive, got {self.api_timeout}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> RegisterSettings:
        return envconfig.load(cls, ENV_PREFIX, environ, **overrides)


@dataclass(frozen=True)
class TaskNetwork:
    """What the metadata endpoint says about the task's interface; any field may be missing."""

    eni_id: str | None = None
    private_ip: str | None = None
    mac: str | None = None


def read_task_network(metadata_uri: str, timeout: float) -> TaskNetwork:
    """The task's network interface from the ECS task metadata endpoint (v4)."""
    url = metadata_uri.rstrip("/") + "/task"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            document = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RegistrationError(f"cannot read task metadata from {url}: {exc}") from None
    network = parse_task_document(document)
    if network == TaskNetwork():
        raise RegistrationError(f"task metadata at {url} names no network interface (awsvpc mode needed)")
    return network


def parse_task_document(document: Any) -> TaskNetwork:
    """Find the ENI id (``Attachments``) or the private address and MAC (``Containers[].Networks``)."""
    if not isinstance(document, dict):
        return TaskNetwork()
    eni_id = None
    for attachment in document.get("Attachments") or []:
        for detail in attachment.get("Details") or attachment.get("details") or []:
            if detail.get("Name", detail.get("name")) == "networkInterfaceId":
                eni_id = detail.get("Value", detail.get("value"))
    private_ip = mac = None
    for container in document.get("Containers") or []:
        for network in container.get("Networks") or []:
            eni_id = eni_id or network.get("NetworkInterfaceId")
            addresses = network.get("IPv4Addresses") or []
            private_ip = private_ip or (addresses[0] if addresses else None)
            mac = mac or network.get("MACAddress")
    return TaskNetwork(eni_id=eni_id, private_ip=private_ip, mac=mac)


def find_address(ec2: Any, network: TaskNetwork, allow_private: bool) -> tuple[str, str, str]:
    """``(address, kind, eni_id)`` of the task's interface; kind is ``public`` or ``private``."""
    if network.eni_id:
        request: dict[str, Any] = {"NetworkInterfaceIds": [network.eni_id]}
    else:  # a private address is unique within its VPC only: the MAC tells the account's VPCs apart
        request = {"Filters": [{"Name": name, "Values": [value]} for name, value in
                               (("addresses.private-ip-address", network.private_ip), ("mac-address", network.mac))
                               if value]}
    interfaces = ec2.describe_network_interfaces(**request).get("NetworkInterfaces", [])
    if len(interfaces) != 1:
        raise RegistrationError(f"expected one network interface for {request}, EC2 found {len(interfaces)}")
    interface = interfaces[0]
    eni_id = interface["NetworkInterfaceId"]
    public_ip = (interface.get("Association") or {}).get("PublicIp")
    if public_ip:
        return public_ip, "public", eni_id
    if allow_private and interface.get("PrivateIpAddress"):
        return interface["PrivateIpAddress"], "private", eni_id
    raise RegistrationError(f"network interface {eni_id} has no public IP (is AssignPublicIp ENABLED?"
                            " --allow-private registers the private address instead)")


def upsert_record(route53: Any, settings: RegisterSettings, address: str) -> str:
    """UPSERT the A record; returns the Route 53 change id."""
    zone_id = settings.zone_id.removeprefix("/hostedzone/")
    response = route53.change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Comment": "cosmic rendezvous self-registration", "Changes": [{
            "Action": "UPSERT",
            "ResourceRecordSet": {"Name": settings.record_name, "Type": "A", "TTL": settings.record_ttl,
                                  "ResourceRecords": [{"Value": address}]}}]})
    return str(response["ChangeInfo"]["Id"])


def register(settings: RegisterSettings, *, allow_private: bool = False,
             environ: Mapping[str, str] | None = None) -> str:
    """Write the record for this task; returns the address registered."""
    environ = os.environ if environ is None else environ
    metadata_uri = environ.get(METADATA_ENV, "")
    if not metadata_uri:
        raise RegistrationError(f"{METADATA_ENV} is not set: not running in an ECS task (platform 1.4+)?")
    network = read_task_network(metadata_uri, settings.api_timeout)
    event(log, "task_network", eni_id=network.eni_id, private_ip=network.private_ip, mac=network.mac)

    import boto3  # here, not at the top: the server and its image's other entry points never need it
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(connect_timeout=settings.api_timeout, read_timeout=settings.api_timeout,
                    retries={"max_attempts": 5, "mode": "standard"})
    try:
        ec2 = boto3.client("ec2", config=config)
        address, kind, eni_id = find_address(ec2, network, allow_private)
        route53 = boto3.client("route53", config=config)
        change_id = upsert_record(route53, settings, address)
    except (BotoCoreError, ClientError) as exc:
        raise RegistrationError(f"AWS call failed: {exc}") from None
    event(log, "registered", record=settings.record_name, address=address, kind=kind, eni_id=eni_id,
          ttl=settings.record_ttl, zone_id=settings.zone_id, change_id=change_id)
    return address


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.rendezvous.register",
                                     description="UPSERT a Route 53 A record with this ECS task's public IP.")
    parser.add_argument("--zone-id", help=f"hosted zone id ({ENV_PREFIX}ZONE_ID)")
    parser.add_argument("--record-name", help=f"record name ({ENV_PREFIX}RECORD_NAME)")
    parser.add_argument("--record-ttl", type=int, help=f"TTL in seconds ({ENV_PREFIX}RECORD_TTL, default 30)")
    parser.add_argument("--api-timeout", type=float, help=f"seconds per call ({ENV_PREFIX}API_TIMEOUT, default 10)")
    parser.add_argument("--allow-private", action="store_true",
                        help="register the private address when the interface has no public one")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        settings = RegisterSettings.from_env(zone_id=args.zone_id, record_name=args.record_name,
                                             record_ttl=args.record_ttl, api_timeout=args.api_timeout)
    except envconfig.SettingsError as exc:
        event(log, "register_failed", logging.ERROR, reason="settings", error=str(exc))
        return 2
    try:
        register(settings, allow_private=args.allow_private)
    except RegistrationError as exc:
        event(log, "register_failed", logging.ERROR, record=settings.record_name, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
