"""The CloudFormation templates in ``infra/``: clean under cfn-lint, and holding what we rely on.

No AWS account is needed: cfn-lint checks every template against the resource specifications,
and the assertions below read the parsed templates for the properties the design depends on
(Lambda's own NAT for hole punching, the rendezvous ports, private buckets, the Step Functions
steps' handlers).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

cfn_yaml = pytest.importorskip("cfnlint.decode.cfn_yaml")
from tests.common import REPO  # noqa: E402

INFRA = REPO / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))
EXPECTED = {"storage.yaml", "worker.yaml", "rendezvous.yaml", "coordinator.yaml", "stepfunctions.yaml"}


def _template(name: str) -> dict[str, Any]:
    return cfn_yaml.load(str(INFRA / name))


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _only(template: dict[str, Any], kind: str) -> dict[str, Any]:
    (resource,) = _resources(template, kind).values()
    return resource["Properties"]


def _cfn_lint() -> str:
    beside = Path(sys.executable).with_name("cfn-lint")
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    if found is None:
        pytest.skip("cfn-lint is not installed")
    return found


def test_every_template_is_there() -> None:
    assert {path.name for path in TEMPLATES} >= EXPECTED


@pytest.mark.integration
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_is_clean(path: Path) -> None:
    result = subprocess.run([_cfn_lint(), "--format", "parseable", "--non-zero-exit-code", "informational",
                             "--", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# --- worker ------------------------------------------------------------------------------------

def test_worker_parameters_stay_within_lambda_limits() -> None:
    parameters = _template("worker.yaml")["Parameters"]
    memory, timeout, storage = parameters["MemorySize"], parameters["Timeout"], parameters["EphemeralStorage"]
    assert 128 <= memory["MinValue"] <= memory["Default"] <= memory["MaxValue"] <= 10240
    assert memory["Default"] == 10240
    assert timeout["MaxValue"] <= 900 and timeout["Default"] <= 900
    assert 512 <= storage["MinValue"] <= storage["Default"] <= storage["MaxValue"] <= 10240


def test_worker_is_an_image_outside_any_vpc() -> None:
    function = _only(_template("worker.yaml"), "AWS::Lambda::Function")
    assert function["PackageType"] == "Image"
    assert function["Code"] == {"ImageUri": {"Ref": "ImageUri"}}
    assert "VpcConfig" not in function, "a VPC-attached worker loses Lambda's NAT and cannot hole-punch"
    assert function["MemorySize"] == {"Ref": "MemorySize"}
    assert function["Timeout"] == {"Ref": "Timeout"}
    assert function["EphemeralStorage"] == {"Size": {"Ref": "EphemeralStorage"}}


def test_workers_read_the_markers_where_the_coordinator_writes_them_and_nothing_of_its_state() -> None:
    """The cancel and abort markers live under the job's result path: the worker role reads them
    through its results grant, and needs nothing of the coordinator's state bucket."""
    from services.keys import control_key

    template = _template("worker.yaml")
    (role,) = _resources(template, "AWS::IAM::Role").values()
    readable = [_with_defaults(template, resource) for statement in _statements(role)
                if "s3:GetObject" in _listed(statement["Action"]) for resource in _listed(statement["Resource"])]
    assert not any("StateBucket" in str(resource) for resource in readable), readable
    assert "StateBucketName" not in template["Parameters"]
    prefix = template["Parameters"]["ResultsPrefix"]["Default"]
    results = f"arn:${{AWS::Partition}}:s3:::${{ResultBucketName}}/{prefix}*"
    assert results in readable, readable
    for marker in ("cancel", "abort"):
        assert control_key(f"{prefix}-partition-25MB/1GB/1", "j1", marker).startswith(prefix)


def test_worker_role_is_least_privilege() -> None:
    template = _template("worker.yaml")
    (role,) = _resources(template, "AWS::IAM::Role").values()
    statements = [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert not any("*" in action for action in actions)
    assert "s3:PutObject" in actions and "s3:DeleteObject" not in actions
    assert "ManagedPolicyArns" not in role["Properties"]
    assert _only(template, "AWS::Logs::LogGroup")["RetentionInDays"]


# --- rendezvous --------------------------------------------------------------------------------

def _with_defaults(template: dict[str, Any], value: Any) -> Any:
    """``value`` as deployed with every parameter at its default: a Ref's default, a Sub filled in."""
    parameters = template["Parameters"]
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
        return parameters[value["Ref"]]["Default"]
    if isinstance(value, dict) and set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):
        return re.sub(r"\$\{(\w+)\}", lambda m: str(parameters[m[1]]["Default"]) if m[1] in parameters
                      and "Default" in parameters[m[1]] else m[0], value["Fn::Sub"])
    return value


def _ingress(template: dict[str, Any]) -> dict[int, dict[str, Any]]:
    rules = _only(template, "AWS::EC2::SecurityGroup")["SecurityGroupIngress"]
    assert all(rule["FromPort"] == rule["ToPort"] for rule in rules)
    return {_with_defaults(template, rule["FromPort"]): rule for rule in rules}


def test_rendezvous_opens_pairing_from_the_parameter_and_health_only_to_the_vpc() -> None:
    template = _template("rendezvous.yaml")
    ingress = _ingress(template)
    assert set(ingress) == {10000, 10001}
    assert ingress[10000]["FromPort"] == {"Ref": "PairingPort"}
    assert ingress[10001]["FromPort"] == {"Ref": "HealthPort"}
    assert ingress[10000]["CidrIp"] == {"Ref": "PairingSourceCidr"}
    assert template["Parameters"]["PairingSourceCidr"]["Default"] == "0.0.0.0/0"
    assert ingress[10001]["CidrIp"] == {"Ref": "VpcCidr"}
    assert ingress[10001]["CidrIp"] != "0.0.0.0/0"
    assert "Default" not in template["Parameters"]["VpcCidr"]


def test_rendezvous_task_has_a_public_ip_and_a_health_check_on_10001() -> None:
    template = _template("rendezvous.yaml")
    service = _only(template, "AWS::ECS::Service")
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "ENABLED"
    assert service["LaunchType"] == "FARGATE"
    task = _only(template, "AWS::ECS::TaskDefinition")
    assert task["NetworkMode"] == "awsvpc"
    containers = {c["Name"]: c for c in task["ContainerDefinitions"]}
    server = containers["rendezvous"]
    assert {_with_defaults(template, m["ContainerPort"]) for m in server["PortMappings"]} == {10000, 10001}
    probe = " ".join(_with_defaults(template, part) for part in server["HealthCheck"]["Command"])
    assert ":10001/healthz" in probe
    environment = {e["Name"]: e["Value"] for e in server["Environment"]}
    assert environment["COSMIC_RENDEZVOUS_PORT"] == {"Ref": "PairingPort"}
    assert environment["COSMIC_RENDEZVOUS_HEALTH_PORT"] == {"Ref": "HealthPort"}
    register = containers["register"]
    assert register["EntryPoint"][-1] == "services.rendezvous.register", "the image's ENTRYPOINT runs the server"
    assert "Command" not in register
    assert {"ContainerName": "register", "Condition": "SUCCESS"} in server["DependsOn"]


def test_rendezvous_task_role_may_only_register_its_record() -> None:
    template = _template("rendezvous.yaml")
    task = _only(template, "AWS::ECS::TaskDefinition")
    role_name = task["TaskRoleArn"]["Fn::GetAtt"][0]
    role = template["Resources"][role_name]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    by_action = {s["Action"]: s for s in statements}
    assert set(by_action) == {"route53:ChangeResourceRecordSets", "ec2:DescribeNetworkInterfaces"}
    zone_arn = by_action["route53:ChangeResourceRecordSets"]["Resource"]["Fn::Sub"]
    assert zone_arn.endswith("hostedzone/${HostedZoneId}")
    assert template["Outputs"]["DnsName"]["Value"] == {"Ref": "RecordName"}


# --- coordinator -------------------------------------------------------------------------------

def test_coordinator_environment_and_secret() -> None:
    template = _template("coordinator.yaml")
    containers = {c["Name"]: c for c in _only(template, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]}
    container = containers["coordinator"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["COSMIC_COORDINATOR_RENDEZVOUS_ENDPOINT"] == {"Ref": "RendezvousEndpoint"}
    rendezvous = _template("rendezvous.yaml")
    endpoint = _with_defaults(rendezvous, rendezvous["Outputs"]["Endpoint"]["Value"])
    assert endpoint == "${RecordName}:10000", "the rendezvous stack's Endpoint output is host:pairing port"
    pattern = template["Parameters"]["RendezvousEndpoint"]["AllowedPattern"]
    assert re.fullmatch(pattern, "rendezvous.cosmic.example.org:10000")
    assert environment["COSMIC_COORDINATOR_STATE_BUCKET"] == {"Ref": "StateBucketName"}
    assert environment["COSMIC_WORKER_FUNCTION"] == {"Ref": "WorkerFunctionName"}
    assert "COSMIC_COORDINATOR_API_TOKEN" not in environment
    assert container["Secrets"] == [{"Name": "COSMIC_COORDINATOR_API_TOKEN", "ValueFrom": {"Ref": "ApiTokenSecretArn"}}]
    assert [m["ContainerPort"] for m in container["PortMappings"]] == [8000]


def test_coordinator_keeps_a_stable_name_and_runs_one_task_at_a_time() -> None:
    template = _template("coordinator.yaml")
    task = _only(template, "AWS::ECS::TaskDefinition")
    containers = {c["Name"]: c for c in task["ContainerDefinitions"]}
    register = containers["register"]
    assert register["EntryPoint"] == ["python", "-m", "services.rendezvous.register"]
    assert register["Essential"] is False
    assert register["Command"] == {"Fn::If": ["PrivateAddress", ["--allow-private"], {"Ref": "AWS::NoValue"}]}
    variables = {e["Name"]: e["Value"] for e in register["Environment"]}
    assert variables["COSMIC_RENDEZVOUS_RECORD_NAME"] == {"Ref": "ApiRecordName"}
    assert variables["COSMIC_RENDEZVOUS_ZONE_ID"] == {"Ref": "HostedZoneId"}
    assert containers["coordinator"]["DependsOn"] == [{"ContainerName": "register", "Condition": "SUCCESS"}]
    assert template["Outputs"]["ApiUrl"]["Value"] == {"Fn::Sub": "http://${ApiRecordName}:8000"}
    # a new coordinator resumes every unfinished job from S3: two at once would both run them
    deployment = _only(template, "AWS::ECS::Service")["DeploymentConfiguration"]
    assert deployment["MaximumPercent"] == 100 and deployment["MinimumHealthyPercent"] == 0
    text = json.dumps(template["Resources"]["TaskRole"])
    assert "hostedzone/${HostedZoneId}" in text and "ec2:DescribeNetworkInterfaces" in text


def test_coordinator_may_invoke_the_worker() -> None:
    template = _template("coordinator.yaml")
    text = json.dumps(template["Resources"]["TaskRole"])
    assert "lambda:InvokeFunction" in text and "lambda:GetAccountSettings" in text
    assert "function:${WorkerFunctionName}" in text


def test_coordinator_leaves_the_partitions_read_only() -> None:
    """It writes job state, summaries under the results prefix and cancel markers: never the inputs."""
    role = _template("coordinator.yaml")["Resources"]["TaskRole"]
    writes = [resource for statement in _statements(role) if "s3:PutObject" in _listed(statement["Action"])
              for resource in _listed(statement["Resource"])]
    data = [resource["Fn::Sub"] for resource in writes if "${DataBucketName}" in resource["Fn::Sub"]]
    assert sorted(data) == ["arn:${AWS::Partition}:s3:::${DataBucketName}/${ResultsPrefix}*"]


# --- storage -----------------------------------------------------------------------------------

def test_buckets_are_private_and_encrypted() -> None:
    buckets = _resources(_template("storage.yaml"), "AWS::S3::Bucket")
    assert len(buckets) == 3
    for name, bucket in buckets.items():
        assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain", f"{name}: data outlives stacks"
        properties = bucket["Properties"]
        block = properties["PublicAccessBlockConfiguration"]
        assert block == {"BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
                         "RestrictPublicBuckets": True}, name
        rules = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rules and rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"], name
    assert _template("storage.yaml")["Parameters"]["Versioning"]["Default"] == "Suspended"


def test_existing_buckets_replace_the_created_ones() -> None:
    template = _template("storage.yaml")
    for kind in ("Model", "Data"):
        assert template["Resources"][f"{kind}Bucket"]["Condition"] == f"Create{kind}Bucket"
        assert template["Conditions"][f"Create{kind}Bucket"] == {"Fn::Equals": [{"Ref": f"Existing{kind}Bucket"}, ""]}
        assert template["Outputs"][f"{kind}BucketName"]["Value"] == {
            "Fn::If": [f"Create{kind}Bucket", {"Ref": f"{kind}Bucket"}, {"Ref": f"Existing{kind}Bucket"}]}
        pattern = template["Parameters"][f"Existing{kind}Bucket"]["AllowedPattern"]
        assert re.fullmatch(pattern, "") and re.fullmatch(pattern, "cosmicai-data")
        assert not re.fullmatch(pattern, "Cosmic_Data")


def test_repositories_scan_on_push_and_expire_old_images() -> None:
    repositories = _resources(_template("storage.yaml"), "AWS::ECR::Repository")
    assert {r["Properties"]["RepositoryName"]["Fn::Sub"].split("/")[-1] for r in repositories.values()} == {
        "rendezvous", "worker", "coordinator"}
    for repository in repositories.values():
        properties = repository["Properties"]
        assert properties["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert "imageCountMoreThan" in properties["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"]


# --- step functions ----------------------------------------------------------------------------

def test_state_machine_plans_maps_and_summarizes() -> None:
    machine = _only(_template("stepfunctions.yaml"), "AWS::StepFunctions::StateMachine")
    states = machine["Definition"]["States"]
    assert machine["Definition"]["StartAt"] == "Plan"
    assert states["Plan"]["Next"] == "Ranks" and states["Ranks"]["Next"] == "Summarize"
    ranks = states["Ranks"]
    assert ranks["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert ranks["ItemReader"]["ReaderConfig"] == {"InputType": "JSON"}
    assert ranks["ItemReader"]["Parameters"] == {"Bucket.$": "$.plan.items.Bucket", "Key.$": "$.plan.items.Key"}
    assert ranks["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert ranks["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject"
    assert ranks["MaxConcurrencyPath"] == "$.plan.max_concurrency"
    assert "ToleratedFailurePercentagePath" in ranks
    worker = ranks["ItemProcessor"]["States"]["Worker"]
    assert worker["Parameters"]["FunctionName"] == "${WorkerFunctionArn}"
    assert "Lambda.ServiceException" in worker["Retry"][0]["ErrorEquals"]
    assert states["Summarize"]["Parameters"]["Payload"] == {"job.$": "$.plan.job"}
    assert set(machine["DefinitionSubstitutions"]) >= {"PlanFunctionArn", "SummarizeFunctionArn",
                                                        "WorkerFunctionArn", "ToleratedFailurePercentage"}


# The Plan and Summarize steps: coordinator-image Lambdas, each running one handler under awslambdaric.
STEP_HANDLERS = {"PlanFunction": "plan_handler", "SummarizeFunction": "summarize_handler"}
HANDLER_MODULE = "services.coordinator.lambda_handlers"


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _lambda_environment(template: dict[str, Any], name: str) -> dict[str, str]:
    """The function's variables, with every intrinsic (a Ref, a Select...) standing in as a placeholder."""
    variables = template["Resources"][name]["Properties"]["Environment"]["Variables"]
    return {key: value if isinstance(value, str) else "placeholder" for key, value in variables.items()}


def test_steps_are_coordinator_image_lambdas_running_real_handlers() -> None:
    template = _template("stepfunctions.yaml")
    functions = _resources(template, "AWS::Lambda::Function")
    assert set(functions) == set(STEP_HANDLERS)
    module = importlib.import_module(HANDLER_MODULE)  # no torch: the coordinator image has none
    for name, handler in STEP_HANDLERS.items():
        function = functions[name]["Properties"]
        assert function["PackageType"] == "Image"
        assert function["Code"] == {"ImageUri": {"Ref": "CoordinatorImageUri"}}
        assert function["ImageConfig"]["EntryPoint"] == ["/opt/venv/bin/python", "-m", "awslambdaric"]
        assert function["ImageConfig"]["Command"] == [f"{HANDLER_MODULE}.{handler}"]
        assert callable(getattr(module, handler, None)), f"{HANDLER_MODULE}.{handler} does not exist"
        assert function["Architectures"] == ["x86_64"], "the image is pushed as linux/amd64"
        assert "VpcConfig" not in function, f"{name}: the steps need only S3 and Logs, no VPC"
        log_group = function["LoggingConfig"]["LogGroup"]["Ref"]
        assert template["Resources"][log_group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_step_environment_is_what_the_handlers_read() -> None:
    from services import envconfig
    from services.coordinator.config import CoordinatorSettings, load

    template = _template("stepfunctions.yaml")
    settings = set(envconfig.variables(CoordinatorSettings))
    for name in STEP_HANDLERS:
        variables = template["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert variables["COSMIC_COORDINATOR_STATE_BUCKET"] == {"Ref": "StateBucketName"}, "plan writes its items there"
        assert variables["COSMIC_WORKER_FUNCTION"] == {"Fn::Select": [6, {"Fn::Split": [":", {
            "Ref": "WorkerFunctionArn"}]}]}
        assert variables["COSMIC_LOG_FORMAT"] == "json"
        assert variables["MPLCONFIGDIR"].startswith("/tmp/") and variables["COSMIC_CACHE_DIR"].startswith("/tmp/"), \
            "Lambda's filesystem is read-only but for /tmp"
        unknown = {key for key in variables if key.startswith("COSMIC_")} - settings - {
            "COSMIC_LOG_FORMAT", "COSMIC_CACHE_DIR"}
        assert not unknown, f"{name}: no setting reads {unknown}"
        assert load(_lambda_environment(template, name)).state_bucket == "placeholder"


def test_worker_function_name_is_taken_from_its_arn() -> None:
    pattern = _template("stepfunctions.yaml")["Parameters"]["WorkerFunctionArn"]["AllowedPattern"]
    for arn in ("arn:aws:lambda:us-east-1:123456789012:function:cosmic-worker",
                "arn:aws-cn:lambda:cn-north-1:123456789012:function:cosmic-worker:$LATEST"):
        assert re.fullmatch(pattern, arn), arn
        assert arn.split(":")[6] == "cosmic-worker"  # what !Select [6, !Split [":", ...]] gives
    assert not re.fullmatch(pattern, "arn:aws:lambda:us-east-1:123456789012:layer:cosmic-worker:1")


def test_step_parameters_stay_within_lambda_limits() -> None:
    parameters = _template("stepfunctions.yaml")["Parameters"]
    assert not {"PlanFunctionArn", "SummarizeFunctionArn"} & set(parameters), "the stack defines both steps"
    assert parameters["CoordinatorImageUri"]["AllowedPattern"] == \
        _template("worker.yaml")["Parameters"]["ImageUri"]["AllowedPattern"]
    for step in ("Plan", "Summarize"):
        memory, timeout = parameters[f"{step}MemorySize"], parameters[f"{step}Timeout"]
        assert 128 <= memory["MinValue"] <= memory["Default"] <= memory["MaxValue"] <= 10240
        assert 1 <= timeout["MinValue"] <= timeout["Default"] <= timeout["MaxValue"] <= 900


def test_state_machine_invokes_the_steps_defined_here() -> None:
    template = _template("stepfunctions.yaml")
    machine = _only(template, "AWS::StepFunctions::StateMachine")
    substitutions, states = machine["DefinitionSubstitutions"], machine["Definition"]["States"]
    for step, function in (("Plan", "PlanFunction"), ("Summarize", "SummarizeFunction")):
        assert substitutions[f"{step}FunctionArn"] == {"Fn::GetAtt": [function, "Arn"]}
        assert states[step]["Parameters"]["FunctionName"] == f"${{{step}FunctionArn}}"
        assert template["Outputs"][f"{step}FunctionArn"]["Value"] == {"Fn::GetAtt": [function, "Arn"]}
    role = template["Resources"][machine["RoleArn"]["Fn::GetAtt"][0]]
    (invoke,) = [s for s in _statements(role) if s["Action"] == "lambda:InvokeFunction"]
    assert {"Fn::GetAtt": ["PlanFunction", "Arn"]} in invoke["Resource"]
    assert {"Fn::GetAtt": ["SummarizeFunction", "Arn"]} in invoke["Resource"]
    assert {"StateMachineArn", "StateMachineName", "PlanFunctionArn", "SummarizeFunctionArn"} <= set(
        template["Outputs"])


def test_step_roles_reach_only_the_declared_buckets() -> None:
    template = _template("stepfunctions.yaml")
    buckets = {"StateBucketName", "DataBucketName"}
    assert buckets <= set(template["Parameters"])
    bucket_arn = re.compile(r"^arn:\$\{AWS::Partition\}:s3:::\$\{(?P<bucket>\w+)\}(?P<key>/.+)?$")
    roles = _resources(template, "AWS::IAM::Role")
    assert set(roles) == {"PlanRole", "SummarizeRole", "StateMachineRole"}
    for name, role in roles.items():
        assert "ManagedPolicyArns" not in role["Properties"], name
        for statement in _statements(role):
            actions = _listed(statement["Action"])
            assert not any(action.endswith("*") for action in actions), f"{name}: {actions}"
            assert "s3:DeleteObject" not in actions, name
            if not any(action.startswith("s3:") for action in actions):
                continue
            for resource in _listed(statement["Resource"]):
                assert isinstance(resource, dict) and "Fn::Sub" in resource, f"{name}: S3 resource {resource!r}"
                match = bucket_arn.match(resource["Fn::Sub"])
                assert match and match["bucket"] in buckets, f"{name}: S3 resource {resource['Fn::Sub']!r}"
    plan = {a for s in _statements(roles["PlanRole"]) for a in _listed(s["Action"])}
    assert "s3:GetObject" not in plan, "plan lists partitions and writes items; it reads no object"
