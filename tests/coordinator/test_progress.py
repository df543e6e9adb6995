"""Live progress: the record's contract, the worker's rate-limited writer, the coordinator's
cached reader, and what ``GET /jobs/{id}`` makes of them (phase per rank, samples, rate, ETA)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from services.contracts import WorkerEvent
from services.coordinator.progress import ProgressReader, annotate, rank_phase
from services.keys import progress_key, progress_prefix
from services.progress import ProgressError, RankProgress, job_progress, parse_progress
from services.s3store import StoreError


class FakeStore:
    """put_json/objects/get_json over a dict, counting calls (the cost is what is tested)."""

    def __init__(self) -> None:
        self.objects_: dict[tuple[str, str], bytes] = {}
        self.calls = {"put": 0, "list": 0, "get": 0}
        self.fail_puts = False

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        self.calls["put"] += 1
        if self.fail_puts:
            raise StoreError("S3 said no", bucket=bucket, key=key, code="InternalError")
        self.objects_[bucket, key] = json.dumps(document).encode()

    def objects(self, bucket: str, prefix: str) -> list[tuple[str, str, int]]:
        self.calls["list"] += 1
        return [(key, str(hash(body)), len(body)) for (b, key), body in sorted(self.objects_.items())
                if b == bucket and key.startswith(prefix)]

    def get_json(self, bucket: str, key: str) -> Any:
        self.calls["get"] += 1
        return json.loads(self.objects_[bucket, key])


def _job(partitions: int = 2, rank: int = 0) -> WorkerEvent:
    return WorkerEvent(job_id="j1", rank=rank, world_size=2, data_bucket="data", result_bucket="data",
                       partitions=tuple(f"p/{i}.pt" for i in range(partitions)), result_path="results/x")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_live_under_the_result_path_with_the_job_id() -> None:
    assert progress_key("results/x", "j1", 3) == "results/x/_progress/j1/rank-3.json"
    assert progress_key("results/x", "j1", 3).startswith(progress_prefix("results/x", "j1"))


def test_record_round_trips_and_bad_records_name_the_field() -> None:
    record = RankProgress(job_id="j", rank=1, attempt=2, phase="inferring", samples_done=5, samples_expected=10,
                          phases={"inferring": 1.0})
    assert parse_progress(json.loads(json.dumps(record.to_dict()))) == record
    for bad, field in [({**record.to_dict(), "phase": "queued"}, "phase"),
                       ({**record.to_dict(), "samples_done": -1}, "samples_done"),
                       ({**record.to_dict(), "extra": 1}, "extra"),
                       ({**record.to_dict(), "version": 9}, "version"),
                       ({**record.to_dict(), "phases": {"nap": 1}}, "phases"), ([], "record")]:
        with pytest.raises(ProgressError) as caught:
            parse_progress(bad)
        assert caught.value.field == field


def test_writer_writes_each_new_phase_at_once_and_samples_at_most_every_interval(monkeypatch:
                                                                                   pytest.MonkeyPatch) -> None:
    import services.worker.progress as worker_progress

    ticks = iter(range(0, 10_000))
    monotonic = Clock()
    monkeypatch.setattr(worker_progress.time, "monotonic", monotonic)
    store = FakeStore()
    writer = worker_progress.ProgressWriter(store, _job(partitions=2), interval=2.0, clock=lambda: float(next(ticks)))
    writer.phase("downloading")
    writer.phase("loading_model")
    writer.partition_started(100)
    assert store.calls["put"] == 3  # three first entries, no interval in between needed
    hook = writer.after_batch(lambda: None)
    for done in range(10, 101, 10):  # ten batches within one second: no write
        monotonic.now += 0.1
        hook(done)
    assert store.calls["put"] == 3
    monotonic.now += 2.0
    hook(100)
    assert store.calls["put"] == 4
    writer.partition_done(100)
    written = parse_progress(json.loads(store.objects_["data", progress_key("results/x", "j1", 0)]))
    assert (written.phase, written.samples_done, written.samples_expected) == ("inferring", 100, 200)
    writer.phase("done")
    final = parse_progress(json.loads(store.objects_["data", progress_key("results/x", "j1", 0)]))
    assert (final.phase, final.samples_done, final.partitions_done) == ("done", 100, 1)
    assert list(final.phases) == ["downloading", "loading_model", "inferring", "done"]


def test_writer_failure_never_fails_the_rank() -> None:
    store = FakeStore()
    store.fail_puts = True
    writer_module = pytest.importorskip("services.worker.progress")
    writer = writer_module.ProgressWriter(store, _job())
    writer.phase("downloading")  # logged, not raised
    assert writer.writes == 0


def test_reader_lists_at_most_every_interval_and_gets_only_changed_records() -> None:
    store, clock = FakeStore(), Clock()
    for rank in range(3):
        record = RankProgress(job_id="j1", rank=rank, attempt=1, phase="inferring", samples_done=rank)
        store.put_json("data", progress_key("results/x", "j1", rank), record.to_dict())
    store.put_json("data", progress_key("results/x", "j1", 9), {"not": "a record"})
    reader = ProgressReader(store, min_interval=1.0, clock=clock)  # type: ignore[arg-type]
    assert sorted(reader.records("data", "results/x", "j1")) == [0, 1, 2]
    assert (store.calls["list"], store.calls["get"]) == (1, 4)
    reader.records("data", "results/x", "j1")  # within the interval: no request at all
    assert (store.calls["list"], store.calls["get"]) == (1, 4)
    clock.now += 1.5
    changed = RankProgress(job_id="j1", rank=1, attempt=1, phase="uploading", samples_done=50)
    store.put_json("data", progress_key("results/x", "j1", 1), changed.to_dict())
    assert reader.records("data", "results/x", "j1")[1].phase == "uploading"
    assert (store.calls["list"], store.calls["get"]) == (2, 6)  # rank 1 again, and the bad one again
    reader.records("data", "results/x", "j1", finished_at=time.time() + 1)  # ended after the last look: look again
    assert store.calls["list"] == 3
    reader.records("data", "results/x", "j1", finished_at=time.time() - 60)
    assert store.calls["list"] == 3


def test_reader_keeps_the_last_records_while_s3_does_not_answer() -> None:
    store, clock = FakeStore(), Clock()
    record = RankProgress(job_id="j1", rank=0, attempt=1, phase="inferring", samples_done=5)
    store.put_json("data", progress_key("results/x", "j1", 0), record.to_dict())
    reader = ProgressReader(store, min_interval=1.0, clock=clock)  # type: ignore[arg-type]
    assert reader.records("data", "results/x", "j1") == {0: record}

    def gone(bucket: str, prefix: str) -> list[tuple[str, str, int]]:
        raise StoreError("connection refused", bucket=bucket, key=prefix, code=None)

    store.objects = gone  # type: ignore[method-assign]
    clock.now += 5
    assert reader.records("data", "results/x", "j1") == {0: record}


def test_phase_follows_the_rank_state_and_the_current_attempt() -> None:
    old = RankProgress(job_id="j", rank=0, attempt=1, phase="inferring")
    assert rank_phase("pending", 0, None) == "queued"
    assert rank_phase("running", 2, old) == "starting"  # the record is the previous attempt's
    assert rank_phase("running", 1, old) == "inferring"
    assert rank_phase("succeeded", 1, old) == "done"
    assert rank_phase("failed", 1, old) == "inferring"  # where it stopped
    assert rank_phase("cancelled", 1, None) is None


def test_job_progress_estimates_unreported_ranks_and_gives_an_eta() -> None:
    records = [RankProgress(job_id="j", rank=0, attempt=1, phase="inferring", samples_done=50, samples_expected=100,
                            partitions_total=2, started_at=100.0)]
    progress = job_progress(records, {0: 2, 1: 2}, now=110.0)
    assert progress == {"samples_done": 50, "samples_expected": 200, "samples_per_s": 5.0, "eta_s": 30.0}
    assert job_progress([], {0: 2}, now=1.0) == {"samples_done": 0, "samples_expected": None,
                                                 "samples_per_s": None, "eta_s": None}


def test_annotate_adds_phase_and_samples_to_every_rank() -> None:
    status = {"ranks": [{"rank": 0, "state": "running", "attempts": [{"attempt": 1}]},
                        {"rank": 1, "state": "pending", "attempts": []}]}
    record = RankProgress(job_id="j", rank=0, attempt=1, phase="inferring", samples_done=7, samples_expected=14,
                          partitions_total=1, started_at=1.0, updated_at=2.0, phases={"inferring": 1.5})
    annotated = annotate(status, {0: record}, {0: 1, 1: 1}, now=3.0)
    assert [(r["phase"], r["samples_done"]) for r in annotated["ranks"]] == [("inferring", 7), ("queued", 0)]
    assert annotated["ranks"][0]["phases"] == {"inferring": 1.5}
    assert annotated["progress"]["samples_expected"] == 28


def test_the_cli_bar_counts_samples_with_a_rate_and_an_eta() -> None:
    import io

    from services.client.api import Progress
    from services.client.status import describe_job

    status = {"job_id": "j", "state": "running", "world_size": 4, "ranks_by_state": {"running": 3, "succeeded": 1},
              "progress": {"samples_done": 96, "samples_expected": 192, "samples_per_s": 25.2, "eta_s": 3.8},
              "partitions": 4, "function": "f", "result": "s3://b/r", "submitted_at": 0.0,
              "ranks": [{"phase": "inferring"}, {"phase": "inferring"}, {"phase": "uploading"}, {"phase": "done"}]}
    line = Progress("j", io.StringIO()).line(status)
    assert "[############............] 96/192 samples, 25.2/s, ETA 4 s; 1/4 ranks done  running" in line
    described = describe_job(status)
    assert "samples: 96 of ~192, 25.2/s, ETA 4 s" in described
    assert "phases: 2 inferring, 1 uploading, 1 done" in described
    unreported = {**status, "progress": {"samples_done": 0, "samples_expected": None}}
    assert "[######..................] 1/4 ranks done  running" in Progress("j", io.StringIO()).line(unreported)


def test_a_real_job_reports_every_rank_done_with_its_samples(api: Any, stack: Any, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real worker: each rank's record says done with all its samples, the API sums
    them, and ``cosmic status --follow`` follows the job to its end."""
    import argparse

    from services.client import status as status_command
    from tests.common import SAMPLES

    job_id = api.submit(stack.payload(file_limit="4", world_size=2))
    monkeypatch.setenv("COSMIC_COORDINATOR_URL", api.url)
    assert status_command.run(argparse.Namespace(job_id=job_id, limit=20, follow=True)) == 0
    out = capsys.readouterr().out
    assert f"job {job_id}: succeeded" in out and f"samples: {4 * SAMPLES:,} of ~{4 * SAMPLES:,}" in out
    body = api.call("GET", f"/jobs/{job_id}")[1]
    assert [(r["phase"], r["samples_done"], r["samples_expected"]) for r in body["ranks"]] == \
        [("done", 2 * SAMPLES, 2 * SAMPLES)] * 2
    assert set(body["ranks"][0]["phases"]) >= {"downloading", "loading_model", "inferring", "uploading", "done"}
    assert body["progress"]["samples_done"] == body["progress"]["samples_expected"] == 4 * SAMPLES
    keys = stack.keys(f"{body['result'].split('/', 3)[3]}/_progress/{job_id}/")
    assert [key.rsplit("/", 1)[1] for key in keys] == ["rank-0.json", "rank-1.json"]
    assert status_command.run(argparse.Namespace(job_id=None, limit=20, follow=True)) == 2
