"""``cosmic deploy``: build and push the images, create or update the stacks, print the endpoints, smoke test.

Progress goes to stderr, one line per step and per stack event; the endpoints go to stdout (as
JSON with ``--json``). Exit status: 0 deployed (or planned, with ``--dry-run``), 1 a step failed
(the message names it; running again resumes, every step being idempotent), 2 bad settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services import envconfig
from services.client.commands import EXAMPLE_PAYLOAD
from services.deploy.settings import ENV_PREFIX, DeploySettings

_VALUE_OPTIONS: dict[str, tuple[type, str]] = {
    "name_prefix": (str, "prefix of every stack, bucket, repository and function name (default cosmic)"),
    "domain": (str, "rendezvous host name, e.g. rendezvous.example.com (required)"),
    "api_domain": (str, "coordinator API host name (default: coordinator.<the zone>)"),
    "hosted_zone_id": (str, "Route 53 zone of both names (default: found from --domain)"),
    "vpc_id": (str, "VPC of the Fargate services (default: the default VPC)"),
    "subnet_ids": (str, "comma-separated public subnets (default: the VPC's that assign public IPs)"),
    "api_source_cidr": (str, "who may call the coordinator, e.g. 198.51.100.7/32 (required)"),
    "model_bucket": (str, "existing bucket holding the model folder (default: create one)"),
    "data_bucket": (str, "existing bucket holding the partitions; results go there too (default: create one)"),
    "pairing_source_cidr": (str, "who may reach the pairing port (default 0.0.0.0/0)"),
    "pairing_port": (int, "the rendezvous pairing port (default 10000)"),
    "worker_memory_mb": (int, "worker Lambda memory, 128-10240 (default 10240)"),
    "worker_timeout_s": (int, "worker Lambda timeout, 1-900 (default 900)"),
    "worker_ephemeral_mb": (int, "worker Lambda /tmp, 512-10240 (default 512)"),
    "worker_image": (str, "the worker's image: worker (torch; native and script modes) or worker-lean (no torch: "
                          "exported models only, cold starts 1-2 s shorter) (default worker)"),
    "image_tag": (str, "image tag (default: src- and a digest of the build inputs)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field, (kind, help_text) in _VALUE_OPTIONS.items():
        parser.add_argument("--" + field.replace("_", "-"), dest=field, type=kind,
                            help=f"{help_text}; {envconfig.env_name(ENV_PREFIX, field)}")
    parser.add_argument("--no-build", dest="build", action="store_const", const=False,
                        help="never build: the images must be in ECR under the tag already")
    parser.add_argument("--stepfunctions", action="store_const", const=True,
                        help="also deploy the Step Functions pipeline (infra/stepfunctions.yaml)")
    parser.add_argument("--no-smoke-test", dest="smoke_test", action="store_const", const=False,
                        help="skip the two-rank selftest at the end")
    parser.add_argument("--dry-run", action="store_true",
                        help="do what needs neither Docker nor AWS (read and check templates and settings, "
                             "compute the image tag) and say what the rest would do")
    parser.add_argument("--json", action="store_true", help="print the endpoints as JSON")


def run(args: argparse.Namespace) -> int:
    from services.deploy.pipeline import DeployError, deploy  # boto3 and PyYAML: only once the command runs

    overrides = {field: getattr(args, field) for field in [*_VALUE_OPTIONS, "build", "stepfunctions", "smoke_test"]}
    try:
        settings = DeploySettings.from_env(**overrides)
    except envconfig.SettingsError as exc:
        print(f"cosmic deploy: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("cosmic deploy: dry run: nothing will be built, pushed or created", file=sys.stderr)
    try:
        deployment = deploy(settings, args.dry_run, lambda line: print(line, file=sys.stderr, flush=True))
    except DeployError as exc:
        print(f"cosmic deploy: {exc}", file=sys.stderr)
        print("cosmic deploy: fix that and run again: finished steps are found in place", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncosmic deploy: interrupted; a stack operation already started goes on in CloudFormation",
              file=sys.stderr)
        return 130
    report = endpoints(deployment)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def endpoints(d: Any) -> dict[str, Any]:
    """What a user needs after deploying, by name."""
    if d.dry_run:
        return {"dry_run": True, "image_tag": d.image_tag, "steps": [{"step": s, "plan": w} for s, w in d.done]}
    outputs = {part: result.outputs for part, result in d.stacks.items()}
    return {
        "dry_run": False,
        "account": d.account, "region": d.region,
        "rendezvous": outputs["rendezvous"].get("Endpoint"),
        "coordinator_url": outputs["coordinator"].get("ApiUrl"),
        "api_token_secret": d.settings.token_secret_name,
        "worker_function": outputs["worker"].get("FunctionArn"),
        "buckets": {key: outputs["storage"].get(f"{key.capitalize()}BucketName") for key in ("model", "data", "state")},
        "state_machine": outputs.get("stepfunctions", {}).get("StateMachineArn"),
        "images": {target: ref.uri for target, ref in d.images.items()},
        "stacks": {result.name: result.action for result in d.stacks.values()},
        "smoke_test": [vars(check) for check in d.smoke],
        "payload": example_payload(outputs["storage"]),
    }


def example_payload(storage: dict[str, str]) -> dict[str, Any]:
    """The users' payload (examples/payload.json) pointed at the deployed buckets."""
    payload = json.loads(EXAMPLE_PAYLOAD.read_text())
    payload.update(bucket=storage.get("ModelBucketName"), data_bucket=storage.get("DataBucketName"))
    return dict(payload)


def render(report: dict[str, Any]) -> str:
    if report["dry_run"]:
        lines = [f"dry run done; images would be tagged :{report['image_tag']}. The plan:"]
        lines += [f"  {item['step']:<22}{item['plan']}" for item in report["steps"]]
        return "\n".join(lines)
    rows = [("rendezvous", report["rendezvous"]),
            ("coordinator", report["coordinator_url"]),
            ("api token", f"aws secretsmanager get-secret-value --secret-id {report['api_token_secret']} "
                          "--query SecretString --output text"),
            ("worker", report["worker_function"]),
            *((f"{key} bucket", f"s3://{name}") for key, name in report["buckets"].items()),
            *((f"{target} image", uri) for target, uri in report["images"].items()),
            *(("state machine", report["state_machine"]),) * bool(report["state_machine"]),
            *((stack, action) for stack, action in report["stacks"].items()),
            *((f"smoke rank {c['rank']}", f"paired {c['local']} <-> {c['peer']}") for c in report["smoke_test"])]
    lines = [f"deployed to {report['account']} in {report['region']}:"]
    lines += [f"  {name:<20}{value}" for name, value in rows]
    lines += ["", f"export COSMIC_COORDINATOR_URL={report['coordinator_url']}",
              f"export COSMIC_COORDINATOR_API_TOKEN=$(aws secretsmanager get-secret-value --secret-id "
              f"{report['api_token_secret']} --query SecretString --output text)",
              "", "a payload for this deployment (the model folder and partitions must be in those buckets):",
              json.dumps(report["payload"])]
    return "\n".join(lines)
