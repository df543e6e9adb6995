"""``cosmic sweep``: its jobs write under the ``result`` prefix, and ``--generate`` fills what is missing."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from services.client import datasets
from services.client.commands import sweep


class Jobs:
    """A coordinator that fails every job at once: enough to see what the sweep submits."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def submit(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.payloads.append(payload)
        return {"job_id": f"j{len(self.payloads)}"}

    def wait(self, job_id: str, progress: bool = True) -> dict[str, Any]:
        return {"state": "failed", "error": "no workers here"}

    def report(self, job_id: str, fmt: str) -> Any:
        from services.client.errors import ApiError

        raise ApiError("no report", 404, "no report")


def test_sweep_jobs_write_under_the_result_prefix_the_worker_role_may_write(tmp_path):
    jobs = Jobs()
    result = sweep(jobs, {"data_bucket": "b"}, [25, 100], [1, 2], tmp_path, progress=False,  # type: ignore[arg-type]
                   say=lambda _: None)
    assert [p["result_path"] for p in jobs.payloads] == ["results/sweep/25MB/ws1", "results/sweep/25MB/ws2",
                                                         "results/sweep/100MB/ws1", "results/sweep/100MB/ws2"]
    assert all(p["result_path"].startswith("result") for p in jobs.payloads)  # infra/worker.yaml: ResultsPrefix
    assert not result.ok


def test_ensure_generates_and_uploads_only_what_a_prefix_lacks(s3_endpoint, tmp_path, monkeypatch):
    from services.s3store import S3Store

    made: list[int] = []

    def generate(size: str, count: int, folder: Path, say=print) -> list[Path]:
        folder = tmp_path / size
        folder.mkdir(exist_ok=True)
        made.append(count)
        for index in range(1, count + 1):
            (folder / f"{index}.pt").write_bytes(b"p" * 64)
        return [folder / f"{index}.pt" for index in range(1, count + 1)]

    monkeypatch.setattr(datasets, "generate", generate)
    s3 = S3Store()
    bucket = f"cosmic-sweep-{secrets.token_hex(4)}"
    s3.ensure_bucket(bucket)
    assert datasets.ensure(s3, bucket, "50MB", 3, say=lambda _: None) == 3
    assert sorted(s3.keys(bucket, "50MB/")) == ["50MB/1.pt", "50MB/2.pt", "50MB/3.pt"]
    assert datasets.ensure(s3, bucket, "50MB", 2, say=lambda _: None) == 0 and made == [3]
    assert datasets.ensure(s3, bucket, "50MB", 4, say=lambda _: None) == 1  # only 4.pt is new
    assert made == [3, 4]


@pytest.mark.parametrize(("argv", "complaint"), [
    (["sweep", "--partition-mb", "30", "--generate"], "--generate makes only 25MB, 50MB, 75MB, 100MB, not 30MB"),
])
def test_generate_refuses_sizes_it_cannot_make(argv, complaint, capsys):
    from services import cli

    assert cli.main(argv) == 2
    assert complaint in capsys.readouterr().err
