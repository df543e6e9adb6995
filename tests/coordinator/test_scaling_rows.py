"""The duration/cost plot of one job draws the jobs like it too (a sweep's), so it is a line, not a dot."""

from __future__ import annotations

from typing import Any

from services.coordinator.manifest import Manifest
from services.coordinator.payload import JobRequest
from services.coordinator.planning import Partition, plan
from services.coordinator.service import Coordinator


def manifest(job_id: str, world_size: int, size: str = "25MB", state: str = "succeeded", partitions: int = 4,
             batch_size: int = 32) -> Manifest:
    request = JobRequest.model_validate({
        "bucket": "data", "file_limit": str(partitions), "batch_size": batch_size, "S3_object_name": "m",
        "result_path": f"results/{job_id}", "data_bucket": "data", "data_prefix": size, "world_size": world_size})
    parts = [Partition(f"{size}/{i}.pt", 100) for i in range(1, partitions + 1)]
    job_plan = plan(request, parts, job_id=job_id, function_timeout_s=900, max_world_size=8, rendezvous=None)
    made = Manifest.from_plan(job_id, request, job_plan, function="cosmic-worker", max_attempts=3, rendezvous=None)
    return made.model_copy(update={"state": state})


def summary(job: Manifest) -> dict[str, Any]:
    return {"job_id": job.job_id, "partition_label": job.partition_label, "world_size": job.world_size,
            "invocations": {"attempts": job.world_size}, "wall_time_s": 10.0 / job.world_size,
            "rank_duration_s": {"mean": 9.0 / job.world_size}, "peak_memory_mb": 600.0,
            "cost": {"total": 0.01, "prices": "list"}, "legacy_cost": {"total": 0.001}}


class Jobs:
    def __init__(self, manifests: list[Manifest]) -> None:
        self.manifests = {m.job_id: m for m in manifests}

    def job_ids(self) -> list[tuple[str, str]]:
        return [("state", job_id) for job_id in sorted(self.manifests, reverse=True)]

    def manifest(self, job_id: str) -> tuple[str, Manifest] | None:
        return ("state", self.manifests[job_id]) if job_id in self.manifests else None


class Summaries:
    def __init__(self, manifests: list[Manifest]) -> None:
        self.documents = {f"results/{m.job_id}/summary.json": summary(m) for m in manifests if m.job_id != "j09"}

    def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        return self.documents.get(key)


def test_one_jobs_plot_draws_the_jobs_like_it():
    jobs = [manifest("j01", 1), manifest("j02", 2), manifest("j03", 4), manifest("j04", 2),  # j04: newer ws 2
            manifest("j05", 1, size="100MB"),
            manifest("j06", 8, state="failed"), manifest("j07", 8, partitions=8), manifest("j08", 8, batch_size=512),
            manifest("j09", 8)]  # j09: its summary is missing
    coordinator = Coordinator.__new__(Coordinator)  # only what _scaling_rows reads: the jobs and their summaries
    coordinator._runners, coordinator.jobs, coordinator.store = {}, Jobs(jobs), Summaries(jobs)  # type: ignore
    this = jobs[2]
    rows = coordinator._scaling_rows("j03", this, summary(this))
    assert [(row["partition"], row["world_size"]) for row in rows] == [("25MB", 4), ("100MB", 1), ("25MB", 2),
                                                                       ("25MB", 1)]
    assert rows[2]["wall_time_s"] == 5.0
