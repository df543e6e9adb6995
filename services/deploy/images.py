"""The three images: which tag they get, whether ECR has them already, and building and pushing them.

The tag is a digest of what the images are built from (the Dockerfile, pyproject.toml and
``services/``), so an unchanged tree maps to images ECR already holds: those are neither rebuilt
nor pushed, and the stacks receive the same image digests, so they do not change either.
Building goes through the Docker Engine API (the docker SDK) with the classic builder, which
makes plain single-platform images: Lambda rejects image indexes with provenance attestations.
The classic builder also builds the stages before a target in file order; the layer cache makes
the three builds share them.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from services.deploy.errors import ImageError

ROOT = Path(__file__).resolve().parents[2]
#: The three images by role; the worker's role is built from the target the settings choose.
TARGETS = ("rendezvous", "worker", "coordinator")
ENGINE_API_VERSION = "1.41"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
PLATFORM = "linux/amd64"  # Lambda and the Fargate task definitions are x86_64
#: What the Dockerfile copies into the images; anything else cannot change them.
BUILD_INPUTS = ("Dockerfile", "pyproject.toml", "services")


def build_target(role: str, worker_image: str = "worker") -> str:
    """The Dockerfile target of ``role``: the worker's is ``worker`` or ``worker-lean``."""
    return worker_image if role == "worker" else role


def target_tag(target: str, tag: str) -> str:
    """The tag ``target`` is pushed under: both worker images share the worker repository, so the
    lean one is told apart by a ``-lean`` suffix (and neither overwrites the other)."""
    return f"{tag}-lean" if target == "worker-lean" else tag


@dataclass(frozen=True)
class ImageRef:
    """One pushed image: its repository URI, tag and digest; ``uri`` pins the digest."""

    target: str
    repository: str
    tag: str
    digest: str

    @property
    def uri(self) -> str:
        return f"{self.repository}@{self.digest}"


def _build_files(root: Path) -> Iterator[Path]:
    for name in BUILD_INPUTS:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (item for item in sorted(path.rglob("*")) if item.is_file()
                        and "__pycache__" not in item.parts and item.suffix not in (".pyc", ".pyo"))


def source_tag(root: Path = ROOT) -> str:
    """``src-`` and 12 hex digits of SHA-256 over the build inputs' paths and contents."""
    digest = hashlib.sha256()
    for path in _build_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "src-" + digest.hexdigest()[:12]


def repository_name(uri: str) -> str:
    """``123456789012.dkr.ecr.<region>.amazonaws.com/cosmic/worker`` -> ``cosmic/worker``."""
    return uri.split("/", 1)[1]


def find_image(ecr: Any, repository_uri: str, tag: str) -> str | None:
    """The digest ECR holds under ``tag``, or None."""
    try:
        details = ecr.describe_images(repositoryName=repository_name(repository_uri),
                                      imageIds=[{"imageTag": tag}])["imageDetails"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ImageNotFoundException":
            return None
        raise
    return str(details[0]["imageDigest"]) if details else None


def ecr_credentials(ecr: Any) -> dict[str, str]:
    """Docker credentials from ``ecr:GetAuthorizationToken`` (valid 12 hours)."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return {"username": user, "password": password, "serveraddress": data["proxyEndpoint"]}


def docker_sdk_version() -> str:
    """The installed docker SDK's version; an ImageError naming the extra when it is missing."""
    try:
        import docker
    except ImportError as exc:
        raise ImageError(f"the docker SDK is not installed ({exc}): pip install 'cosmic-rendezvous[deploy]'") from None
    return str(docker.__version__)


def docker_client() -> Any:
    """A client of the Docker daemon that ``DOCKER_HOST`` (or the default socket) names, known to answer."""
    docker_sdk_version()
    import docker
    from docker.errors import DockerException
    from requests.exceptions import RequestException  # the SDK's transport; its errors pass through ping()

    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        # said here, before the SDK opens a socket it would not close on this failure
        raise ImageError(f"no Docker daemon answers: {host.removeprefix('unix://')} does not exist (DOCKER_HOST); "
                         "start one, or build and push the images elsewhere and run again with --no-build")
    # A fixed API version: "auto" would ask the daemon inside the constructor, and a failure there
    # leaves the client's connection open. 1.41 (Docker 20.10) has everything used here.
    client = docker.from_env(version=ENGINE_API_VERSION, timeout=600)
    try:
        client.ping()
    except (DockerException, RequestException) as exc:
        client.close()
        raise ImageError(f"no Docker daemon answers ({exc}); start one, or build and push the images elsewhere "
                         "and run again with --no-build") from None
    return client


def _consume(stream: Iterable[dict[str, Any]], what: str, progress: Callable[[str], None]) -> None:
    """Follow a build or push stream; the Engine API reports failures inside it, not as HTTP errors."""
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
            raise ImageError(f"{what}: {detail}")
        line = str(chunk.get("stream") or chunk.get("status") or "").strip()
        if line.startswith("Step ") or chunk.get("status") in ("Pushed", "Layer already exists"):
            progress(f"{what}: {line}")


def build_image(client: Any, target: str, tag: str, progress: Callable[[str], None], root: Path = ROOT) -> str:
    """Build one Dockerfile target for linux/amd64; returns the local image name."""
    local = f"cosmic-{target}:{tag}"
    progress(f"building {target} as {local} ({PLATFORM})")
    _consume(client.api.build(path=str(root), dockerfile="Dockerfile", target=target, tag=local, platform=PLATFORM,
                              rm=True, forcerm=True, decode=True), f"build {target}", progress)
    return local


def push_image(client: Any, local: str, repository_uri: str, tag: str, credentials: dict[str, str],
               progress: Callable[[str], None]) -> None:
    """Tag a local image for ECR and push it."""
    client.api.tag(local, repository_uri, tag)
    progress(f"pushing {repository_uri}:{tag}")
    auth = {"username": credentials["username"], "password": credentials["password"]}
    _consume(client.api.push(repository_uri, tag=tag, stream=True, decode=True, auth_config=auth),
             f"push {local}", progress)
