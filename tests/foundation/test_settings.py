"""Settings: one prefix per service, renamed variables kept as aliases, shared values defined once."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from services import envconfig
from services.aws import aws_region, s3_endpoint
from services.cache import CacheSettings
from services.client.api import ClientSettings
from services.coordinator.config import CoordinatorSettings
from services.function import WorkerFunction
from services.local.runtime.config import RuntimeSettings
from services.logs import LogSettings
from services.rendezvous.config import ClientSettings as PairSettings
from services.rendezvous.config import ServerSettings
from services.worker.settings import WorkerSettings

#: Every settings class of the services, and the prefix its own fields are read under.
SERVICES = {CoordinatorSettings: "COSMIC_COORDINATOR_", WorkerSettings: "COSMIC_WORKER_",
            RuntimeSettings: "COSMIC_RUNTIME_", ServerSettings: "COSMIC_RENDEZVOUS_", PairSettings: "COSMIC_PAIR_",
            WorkerFunction: "COSMIC_WORKER_", LogSettings: "COSMIC_LOG_", CacheSettings: "COSMIC_CACHE_",
            ClientSettings: "COSMIC_COORDINATOR_"}


@dataclass(frozen=True)
class _Shared:
    ENV_PREFIX: ClassVar[str] = "T_SHARED_"

    name: str = "shared"


@dataclass(frozen=True)
class _Renamed:
    ENV_PREFIX: ClassVar[str] = "T_NEW_"
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {"port": "T_OLD_PORT"}

    port: int = 1
    shared: _Shared = field(default_factory=_Shared)


@pytest.fixture
def announced(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Announcements start afresh (they are once per process) and are captured."""
    monkeypatch.setattr(envconfig, "_announced", set())
    caplog.set_level(logging.INFO, logger="cosmic.settings")


def _renames(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [record.fields for record in caplog.records if record.getMessage() == "setting_renamed"]  # type: ignore


@pytest.mark.usefixtures("announced")
def test_an_old_name_still_works_and_is_announced_once(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"T_OLD_PORT": "7"}
    assert envconfig.load(_Renamed, environ=environ).port == 7
    assert envconfig.load(_Renamed, environ=environ).port == 7
    assert _renames(caplog) == [{"old": "T_OLD_PORT", "new": "T_NEW_PORT", "used": "T_OLD_PORT"}]
    assert all(record.levelno == logging.WARNING for record in caplog.records)


@pytest.mark.usefixtures("announced")
def test_the_new_name_wins_when_both_are_set(caplog: pytest.LogCaptureFixture) -> None:
    assert envconfig.load(_Renamed, environ={"T_OLD_PORT": "7", "T_NEW_PORT": "8"}).port == 8
    assert _renames(caplog) == [{"old": "T_OLD_PORT", "new": "T_NEW_PORT", "used": "T_NEW_PORT"}]


@pytest.mark.usefixtures("announced")
def test_argument_beats_both_names_and_empty_means_unset(caplog: pytest.LogCaptureFixture) -> None:
    assert envconfig.load(_Renamed, environ={"T_OLD_PORT": "7", "T_NEW_PORT": "8"}, port=9).port == 9
    assert envconfig.load(_Renamed, environ={"T_OLD_PORT": "", "T_NEW_PORT": ""}).port == 1
    assert envconfig.lookup(_Renamed, "port", {"T_OLD_PORT": "5"}) == 5
    assert envconfig.lookup(_Renamed, "port", {}) is None


@pytest.mark.usefixtures("announced")
def test_a_bad_old_value_names_the_old_variable() -> None:
    with pytest.raises(envconfig.SettingsError, match="T_OLD_PORT='x'"):
        envconfig.load(_Renamed, environ={"T_OLD_PORT": "x"})


def test_nested_settings_read_their_own_prefix() -> None:
    loaded = envconfig.load(_Renamed, environ={"T_SHARED_NAME": "n", "T_NEW_SHARED": "ignored"})
    assert loaded.shared == _Shared("n")
    assert envconfig.variables(_Renamed) == {"T_NEW_PORT": "port", "T_SHARED_NAME": "shared.name"}
    assert envconfig.renamed(_Renamed) == {"T_OLD_PORT": "T_NEW_PORT"}


def test_the_worker_function_is_defined_once_for_the_coordinator_and_the_runtime() -> None:
    environ = {"COSMIC_WORKER_FUNCTION": "my-worker", "COSMIC_WORKER_TIMEOUT": "120"}
    coordinator = envconfig.load(CoordinatorSettings, environ=environ)
    runtime = RuntimeSettings.from_env(environ)
    assert coordinator.worker == runtime.worker == WorkerFunction("my-worker", 120.0)
    with pytest.raises(envconfig.SettingsError, match="COSMIC_WORKER_TIMEOUT"):
        RuntimeSettings.from_env({"COSMIC_WORKER_TIMEOUT": "901"})


def test_each_service_reads_only_its_own_prefix() -> None:
    shared = set(envconfig.variables(WorkerFunction))
    for cls, prefix in SERVICES.items():
        names = set(envconfig.variables(cls, prefix)) - (shared if cls is not WorkerFunction else set())
        assert names and all(name.startswith(prefix) for name in names), (cls.__name__, names)
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(getattr(cls, "ENV_ALIASES", {})) <= fields, f"{cls.__name__} aliases a field it lacks"


@pytest.mark.parametrize(("cls", "old", "value", "field_name", "expected"), [
    (CoordinatorSettings, "COSMIC_API_TOKEN", "t", "api_token", "t"),
    (CoordinatorSettings, "COSMIC_STATE_BUCKET", "b", "state_bucket", "b"),
    (CoordinatorSettings, "COSMIC_RENDEZVOUS_ENDPOINT", "h:1", "rendezvous_endpoint", "h:1"),
    (CoordinatorSettings, "COSMIC_MAX_WORLD_SIZE", "5", "max_world_size", 5),
    (CoordinatorSettings, "COSMIC_JOB_DEADLINE_S", "9", "job_deadline_s", 9.0),
    (RuntimeSettings, "COSMIC_SANDBOXES", "3", "sandboxes", 3),
    (RuntimeSettings, "COSMIC_WORKER_HOST", "0.0.0.0", "host", "0.0.0.0"),
    (RuntimeSettings, "COSMIC_WORKER_HANDLER", "a.b", "handler", "a.b"),
    (RuntimeSettings, "COSMIC_WORKER_MEMORY_MB", "512", "memory_mb", 512),
    (WorkerSettings, "COSMIC_THREADS", "2", "threads", 2),
    (WorkerSettings, "COSMIC_MALLOC_TUNE", "0", "malloc_tune", False),
    (ClientSettings, "COSMIC_API_TOKEN", "t", "api_token", "t"),
])
@pytest.mark.usefixtures("announced")
def test_the_services_old_names(caplog: pytest.LogCaptureFixture, cls: type, old: str, value: str,
                                field_name: str, expected: object) -> None:
    assert getattr(envconfig.load(cls, environ={old: value}), field_name) == expected
    new = envconfig.renamed(cls)[old]
    assert new.startswith(SERVICES[cls]) and _renames(caplog) == [{"old": old, "new": new, "used": old}]


def test_messages_name_both_the_new_and_the_old_variable() -> None:
    with pytest.raises(envconfig.SettingsError, match=r"COSMIC_COORDINATOR_API_TOKEN \(formerly COSMIC_API_TOKEN\)"):
        envconfig.load(CoordinatorSettings, environ={"COSMIC_COORDINATOR_HOST": "0.0.0.0"})


def test_one_region_and_s3_endpoint_from_the_standard_variables() -> None:
    assert aws_region({}) == "us-east-1"
    assert aws_region({"AWS_DEFAULT_REGION": "eu-west-1"}) == "eu-west-1"
    assert aws_region({"AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "ap-south-1"}) == "ap-south-1"
    assert s3_endpoint({}) is None
    assert s3_endpoint({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3"}) == "http://s3"
