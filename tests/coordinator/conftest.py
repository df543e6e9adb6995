"""The coordinator against real servers on loopback: moto's S3, the local Lambda runtime running the
real worker handler, the rendezvous server; the coordinator itself as a child process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.common import Servers, seed_bucket
from tests.processes import api, rendezvous_process, runtime_process, start_coordinator

FIXTURES = (api, start_coordinator)  # offered to the tests below, as if defined here

PARTITIONS = 6
SANDBOXES = 4


@pytest.fixture(scope="session")
def stack(e2e: None, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """moto's S3 seeded with tiny partitions, the local runtime running the real worker (through a
    handler that fails on request), and the rendezvous server: what a coordinator talks to."""
    torch = pytest.importorskip("torch")  # the workers in the runtime's sandboxes; never the coordinator
    pytest.importorskip("awslambdaric")
    from services.s3store import S3Store
    from services.worker.model import RedshiftModel

    folder = tmp_path_factory.mktemp("coordinator-stack")
    store = S3Store()
    torch.manual_seed(5)
    bucket, _, _ = seed_bucket(store, "cosmic-coord-", PARTITIONS, RedshiftModel())
    runtime_options = ["--sandboxes", str(SANDBOXES), "--timeout", "120", "--handler",
                       "tests.coordinator.flaky_handler.handler"]
    with runtime_process(folder / "runtime.log", *runtime_options,
                         env={"COSMIC_WORKER_SCRATCH_DIR": str(folder / "scratch")}) as lambda_endpoint, \
            rendezvous_process(folder / "rendezvous.log") as rendezvous:
        yield Servers(s3_endpoint, lambda_endpoint, rendezvous, bucket, store)
