"""The Lambda handler, called in-process against a real S3 server: every mode, every failure."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from services.accuracy import redshift_metrics  # noqa: E402
from services.contracts import EventError  # noqa: E402
from services.keys import (  # noqa: E402
    collective_summary_key,
    commit_key,
    labels_key,
    outcome_key,
    predictions_key,
    progress_key,
    result_key,
)
from services.worker import handler as handler_module  # noqa: E402
from services.worker.checkpoints import CheckpointError  # noqa: E402
from services.worker.data import PartitionError, load_partition  # noqa: E402
from services.worker.legacy_script import ScriptFailed  # noqa: E402
from tests.common import partition_bytes  # noqa: E402
from tests.worker.conftest import World  # noqa: E402

LEGACY_KEYS = ["total_cpu_time (seconds)", "total_cpu_memory (MB)", "execution_time (seconds/batch)", "num_batches",
               "batch_size", "device", "throughput_bps", "sample_persec", "result_path", "data_path"]


class Context:
    aws_request_id = "test-request"


@pytest.fixture
def invoke(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], dict]:
    """A fresh sandbox (cold) per test, with its own scratch folder."""
    monkeypatch.setenv("COSMIC_WORKER_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setattr(handler_module, "_sandbox", None)
    return lambda event: handler_module.handler(event, Context())


def expected_predictions(world: World, model: Any, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [load_partition(world.store.get(world.bucket, key).data, key) for key in keys]
    with torch.inference_mode():
        predicted = [model([torch.from_numpy(p.images), torch.from_numpy(p.magnitudes)]).reshape(-1).numpy()
                     for p in parts]
    return np.concatenate(predicted), np.concatenate([p.redshifts for p in parts])


def test_native_writes_every_legacy_key_predictions_and_accuracy(world: World, invoke, tiny_model) -> None:
    event = world.event()
    response = invoke(event)
    assert response["status"] == "succeeded" and response["num_samples"] == 96
    assert response["partitions_done"] == world.partitions and response["cold_start"] is True
    assert response["result_keys"] == [predictions_key(event["result_path"], 0), labels_key(event["result_path"], 0),
                                       result_key(event["result_path"], 0)]
    assert world.results(event["result_path"]) == sorted(response["result_keys"])
    assert world.store.get_json(world.bucket, commit_key(event["result_path"], event["job_id"], 0)) \
        == {"attempt": 1, "at": pytest.approx(time.time(), abs=60)}, "the attempt that wrote holds the claim"
    progress = progress_key(event["result_path"], event["job_id"], 0)  # where the rank is, for whoever watches
    assert json.loads(world.store.get(world.bucket, progress).data)["phase"] == "done"
    document = json.loads(world.store.get(world.bucket, result_key(event["result_path"], 0)).data)
    assert list(document)[: len(LEGACY_KEYS)] == LEGACY_KEYS
    assert document["num_batches"] == 4 and document["batch_size"] == 32 and document["data_path"] == world.partitions
    assert document["total_cpu_time (seconds)"] == pytest.approx(document["infer_s"], abs=1e-3)
    assert 100 < document["total_cpu_memory (MB)"] == document["peak_rss_mb"] < 8000
    assert document["sample_persec"] == pytest.approx(96 / document["infer_s"], rel=0.01)
    predicted = np.load(io.BytesIO(world.store.get(world.bucket, predictions_key(event["result_path"], 0)).data))
    expected, truth = expected_predictions(world, tiny_model, world.partitions)
    assert predicted.shape == (96,) and np.abs(predicted - expected).mean() < 5e-3  # bf16-mlp by default
    assert document["accuracy"]["mae"] == pytest.approx(redshift_metrics(predicted, truth)["mae"], rel=1e-6)
    assert response["collective"] == "skipped"
    assert 0 <= response["timings_s"]["collective"] < 1  # skipped: timed all the same, for the timeline


def test_warm_invocation_reuses_the_model(world: World, invoke) -> None:
    cold = invoke(world.event())
    # the cold one fetched the model from S3 (part of its load: a cold start is judged without it)
    assert 0 < cold["timings_s"]["model_download"] < cold["timings_s"]["load"]
    warm = invoke(world.event())
    assert warm["cold_start"] is False and warm["timings_s"]["load"] == warm["timings_s"]["model_download"] == 0.0


def test_every_line_of_an_invocation_carries_its_keys_even_from_threads(
        world: World, invoke, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from services import logs
    from services.worker import feed

    monkeypatch.setattr(logs, "configure", lambda *args, **kwargs: None)  # keep pytest's capturing handler
    caplog.set_level(logging.INFO)
    parse = feed.load_partition

    def parse_and_log(data: bytes, key: str) -> Any:  # runs in the prefetching thread
        logs.event(logging.getLogger("cosmic.test"), "parsed_in_thread", thread=threading.current_thread().name)
        return parse(data, key)

    monkeypatch.setattr(feed, "load_partition", parse_and_log)
    first, second = world.event(rank=1, world_size=2), world.event()
    invoke(first)
    invoke(second)
    failing = world.event(checkpoint={"bucket": world.bucket, "key": "models/none.pt"})
    with pytest.raises(CheckpointError):  # an invocation that fails midway clears its keys too
        invoke(failing)
    logs.event(logging.getLogger("cosmic.test"), "after_the_invocations")

    lines = [(record.getMessage(), record.fields) for record in caplog.records if hasattr(record, "fields")]
    threaded = [fields for name, fields in lines if name == "parsed_in_thread"]
    assert threaded and all(fields["thread"].startswith("partition-feed") for fields in threaded)
    assert [(f["job_id"], f["rank"]) for f in threaded if f["job_id"] != failing["job_id"]] == [
        (first["job_id"], 1), (first["job_id"], 1), (second["job_id"], 0), (second["job_id"], 0)]
    # the failing invocation's prefetch may have parsed a partition before it failed: under its own keys
    assert {f["job_id"] for f in threaded} <= {first["job_id"], second["job_id"], failing["job_id"]}
    done = [fields for name, fields in lines if name == "invocation_done"]
    assert [(f["job_id"], f["rank"], f["attempt"], f["request_id"], f["cold_start"]) for f in done] == [
        (first["job_id"], 1, 1, "test-request", True), (second["job_id"], 0, 1, "test-request", False)]
    assert [f["model_loaded"] for f in done] == [True, False] and all(f["peak_rss_mb"] > 0 for f in done)
    assert any(name == "model_loaded" and f["job_id"] == first["job_id"] for name, f in lines)
    assert lines[-1] == ("after_the_invocations", {}), "no key outlives its invocation"
    assert logs.current_keys() == {}


def test_model_reloads_when_the_checkpoint_changes(world: World, invoke, tiny_model) -> None:
    key = "models/changing.pt"
    buffer = io.BytesIO()
    torch.save(tiny_model.state_dict(), buffer)
    world.store.put(world.bucket, key, buffer.getvalue())
    first = invoke(world.event(checkpoint={"bucket": world.bucket, "key": key}))
    world.store.put(world.bucket, key, buffer.getvalue() + b"")  # same bytes, same ETag: still warm
    assert invoke(world.event(checkpoint={"bucket": world.bucket, "key": key}))["cold_start"] is False
    other = {name: value + 0.01 if value.is_floating_point() else value
             for name, value in tiny_model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(other, buffer)
    world.store.put(world.bucket, key, buffer.getvalue())
    assert first["cold_start"] is True
    assert invoke(world.event(checkpoint={"bucket": world.bucket, "key": key}))["cold_start"] is True


def test_legacy_map_item_finds_the_checkpoint_in_the_model_folder(world: World, invoke) -> None:
    item = {"S3_BUCKET": world.bucket, "S3_OBJECT_NAME": "Anomaly Detection", "SCRIPT": "/tmp/x/inference.py",
            "S3_OBJECT_TYPE": "folder", "WORLD_SIZE": "1", "RANK": "0", "DATA_BUCKET": world.bucket,
            "DATA_PREFIX": "tiny", "DATA_PATH": ["1.pt"], "RESULT_PATH": "legacy-result/1", "BATCH_SIZE": "16"}
    response = invoke(item)
    assert response["status"] == "succeeded" and response["partitions_done"] == ["tiny/1.pt"]
    document = json.loads(world.store.get(world.bucket, "legacy-result/1/0.json").data)
    assert document["num_batches"] == 3 and document["runtime"]["checkpoint"].endswith("Fine_Tune_Model/tiny.pt")


def test_bad_event_fails_before_any_work(world: World, invoke) -> None:
    with pytest.raises(EventError, match="rank"):
        invoke(world.event(rank=3, world_size=2))
    assert handler_module._sandbox is None, "nothing was set up for a bad event"


def test_missing_checkpoint_names_the_folder(world: World, invoke) -> None:
    with pytest.raises(CheckpointError, match=r"Empty Folder/Fine_Tune_Model/"):
        invoke(world.event(checkpoint=None, model_bucket=world.bucket, model_prefix="Empty Folder"))


def test_checkpoint_hash_is_checked(world: World, invoke) -> None:
    with pytest.raises(CheckpointError, match="SHA-256"):
        invoke(world.event(checkpoint={"bucket": world.bucket, "key": world.checkpoint_key, "sha256": "0" * 64}))
    digest = hashlib.sha256(world.store.get(world.bucket, world.checkpoint_key).data).hexdigest()
    good = invoke(world.event(checkpoint={"bucket": world.bucket, "key": world.checkpoint_key, "sha256": digest}))
    assert good["status"] == "succeeded"


def test_corrupt_partition_is_named(world: World, invoke) -> None:
    world.store.put(world.bucket, "broken/1.pt", b"not a torch file")
    with pytest.raises(PartitionError, match=r"broken/1\.pt"):
        invoke(world.event(partitions=["broken/1.pt"]))


def test_npz_and_unlabelled_partitions(world: World, invoke) -> None:
    world.store.put(world.bucket, "npz/1.npz", partition_bytes(5, suffix=".npz", labels=False))
    response = invoke(world.event(partitions=["npz/1.npz"]))
    assert response["num_samples"] == 48 and "accuracy" not in response["checks"]
    assert not any("/labels/" in key for key in response["result_keys"])


def test_cancel_marker_stops_the_rank_and_it_writes_nothing(world: World, invoke) -> None:
    """A cancelled job is stopping: its ranks answer ``cancelled`` and leave no results behind (only
    their progress record, saying where they stopped)."""
    event = world.event(cancel_key="jobs/cancelled-job/CANCEL")
    world.store.put(world.bucket, event["cancel_key"], b"")  # any object there is a marker, even not JSON
    response = invoke(event)
    assert response["status"] == "cancelled" and response["partitions_done"] == [] and response["num_samples"] == 0
    assert response["result_keys"] == [] and world.results(event["result_path"]) == []
    outcome = world.store.get_json(world.bucket, outcome_key(event["result_path"], event["job_id"], 0, 1))
    assert outcome["status"] == "cancelled", "a coordinator that was not there reads how it ended"
    assert world.store.etag(world.bucket, progress_key(event["result_path"], event["job_id"], 0)) is not None


def test_retry_overwrites_only_its_own_objects(world: World, invoke) -> None:
    event = world.event(rank=1, world_size=2)
    world.store.put(world.bucket, result_key(event["result_path"], 0), b"{}")  # another rank's result
    invoke(event)
    before = world.results(event["result_path"])
    world.store.delete(world.bucket, commit_key(event["result_path"], event["job_id"], 1))  # as the coordinator does
    assert invoke({**event, "attempt": 2})["status"] == "succeeded"
    assert world.results(event["result_path"]) == before == sorted(
        [result_key(event["result_path"], 0), result_key(event["result_path"], 1),
         predictions_key(event["result_path"], 1), labels_key(event["result_path"], 1)])
    assert world.store.get(world.bucket, result_key(event["result_path"], 0)).data == b"{}"


def test_an_attempt_beside_the_claim_holder_writes_nothing_and_answers_superseded(world: World, invoke) -> None:
    """Two attempts of a rank alive at once (a backup, an orphan): only the claim holder writes."""
    event = world.event()
    world.store.put_json(world.bucket, commit_key(event["result_path"], event["job_id"], 0), {"attempt": 2})
    response = invoke({**event, "speculative": True})
    assert response["status"] == "superseded" and response["result_keys"] == []
    assert world.results(event["result_path"]) == [], "the claim holder's results are never overwritten"
    outcome = world.store.get_json(world.bucket, outcome_key(event["result_path"], event["job_id"], 0, 1))
    assert outcome["status"] == "superseded"


def test_collective_gives_up_on_absent_peers_and_the_rank_still_succeeds(world: World, invoke, rendezvous: str) -> None:
    response = invoke(world.event(world_size=2, rendezvous=rendezvous, comm_name="absent-peer",
                                  collective_timeout_s=1.0))
    assert response["status"] == "succeeded" and response["collective"].startswith("failed: ")


def test_collective_summary_matches_the_ranks(world: World, invoke, rendezvous: str, tiny_model) -> None:
    base = world.event(world_size=2, rendezvous=rendezvous, comm_name="collective-test",
                       collective_timeout_s=30.0)
    results: dict[int, Any] = {}

    def rank(index: int) -> None:
        results[index] = invoke({**base, "rank": index, "partitions": [world.partitions[index]]})

    threads = [threading.Thread(target=rank, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [results[i]["collective"] for i in (0, 1)] == ["done", "done"]
    summary = json.loads(world.store.get(world.bucket, collective_summary_key(base["result_path"])).data)
    predicted = np.concatenate([np.load(io.BytesIO(world.store.get(world.bucket, predictions_key(
        base["result_path"], i)).data)) for i in (0, 1)])
    _, truth = expected_predictions(world, tiny_model, world.partitions)
    expected = redshift_metrics(predicted, truth)
    assert summary["num_samples"] == 96 and summary["world_size"] == 2
    for name in ("mae", "mse", "bias", "nmad", "r2", "outlier_fraction"):
        assert summary["accuracy"][name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6), name


def test_an_abort_marker_ends_the_wait_for_a_peer_that_failed(world: World, invoke, rendezvous: str) -> None:
    """The coordinator saw rank 1 fail: rank 0 leaves the collective at once, not at its deadline."""
    event = world.event(world_size=2, rendezvous=rendezvous, comm_name=f"abort-{time.time_ns()}",
                        collective_timeout_s=60.0, abort_key="jobs/aborted-job/abort.json")
    marker = threading.Timer(1.0, world.store.put_json,
                             args=(world.bucket, event["abort_key"], {"rank": 1, "reason": "rank 1 attempt 1 failed"}))
    started = time.monotonic()
    marker.start()
    try:
        response = invoke(event)
    finally:
        marker.cancel()
    took = time.monotonic() - started
    assert took < 15, f"rank 0 waited {took:.1f} s for a peer the coordinator knew had failed"
    assert response["status"] == "succeeded" and "rank 1 attempt 1 failed" in response["collective"], response
    assert result_key(event["result_path"], 0) in response["result_keys"]  # its own results are kept


def test_a_rank_that_meets_the_abort_marker_skips_the_collective(world: World, invoke, rendezvous: str) -> None:
    event = world.event(world_size=2, rendezvous=rendezvous, comm_name=f"late-{time.time_ns()}",
                        collective_timeout_s=60.0, abort_key="jobs/aborted-early/abort.json")
    world.store.put_json(world.bucket, event["abort_key"], {"rank": 1, "reason": "rank 1 timed out"})
    started = time.monotonic()
    response = invoke(event)
    assert time.monotonic() - started < 15 and response["collective"] == "skipped: rank 1 timed out", response


def test_retried_attempt_skips_the_collective(world: World, invoke) -> None:
    response = invoke(world.event(world_size=2, attempt=2, rendezvous="127.0.0.1:9", comm_name="late"))
    assert response["collective"] == "skipped"


# -- script mode -------------------------------------------------------------------------------
SCRIPT_OK = """
import json, os, pathlib
pathlib.Path(os.environ["RESULT_MARKER"]).write_text(json.dumps({k: os.environ[k] for k in
    ["S3_BUCKET", "S3_OBJECT_NAME", "RANK", "WORLD_SIZE", "DATA_PREFIX", "DATA_PATH", "RESULT_PATH", "BATCH_SIZE"]}))
print("legacy script ran")
"""
SCRIPT_FAIL = "import sys\nprint('loading model', file=sys.stderr)\nraise SystemExit('CUDA not available: exit 3')\n"


def script_event(world: World, folder: str, script: str, tmp_path: Path) -> dict[str, Any]:
    return world.event(mode="script", checkpoint=None, model_bucket=world.bucket, model_prefix=folder,
                       script=str(tmp_path / "scratch" / folder / script))


def test_script_mode_runs_the_legacy_script_with_its_environment(world: World, invoke, tmp_path, monkeypatch) -> None:
    world.store.put(world.bucket, "Legacy OK/Inference/inference.py", SCRIPT_OK.encode())
    world.store.put(world.bucket, "Legacy OK/Fine_Tune_Model/weights.bin", b"w" * 1000)
    monkeypatch.setenv("RESULT_MARKER", str(tmp_path / "marker.json"))
    event = script_event(world, "Legacy OK", "Inference/inference.py", tmp_path)
    first = invoke(event)
    assert first["status"] == "succeeded" and first["checks"]["files_downloaded"] == 2
    assert "legacy script ran" in first["checks"]["stdout_tail"]
    seen = json.loads((tmp_path / "marker.json").read_text())
    assert seen["S3_OBJECT_NAME"] == "Legacy OK" and seen["DATA_PREFIX"] == "tiny"
    assert json.loads(seen["DATA_PATH"]) == ["1.pt", "2.pt"] and seen["BATCH_SIZE"] == "32"
    assert invoke(event)["checks"]["files_downloaded"] == 0, "a warm start does not download the folder again"


def test_script_failure_is_a_function_error_with_stderr(world: World, invoke, tmp_path) -> None:
    world.store.put(world.bucket, "Legacy Fail/run.py", SCRIPT_FAIL.encode())
    with pytest.raises(ScriptFailed, match=r"(?s)exited with status 1.*loading model.*CUDA not available"):
        invoke(script_event(world, "Legacy Fail", "run.py", tmp_path))


def test_script_outside_the_folder_is_refused(world: World, invoke, tmp_path) -> None:
    world.store.put(world.bucket, "Legacy Escape/run.py", b"print('hi')\n")
    event = script_event(world, "Legacy Escape", "run.py", tmp_path)
    with pytest.raises(ScriptFailed, match="not a file inside"):
        invoke({**event, "script": "/bin/true"})


# -- selftest ----------------------------------------------------------------------------------
def test_selftest_checks_s3_and_pairs_partners(world: World, invoke, rendezvous: str) -> None:
    base = world.event(mode="selftest", world_size=2, rendezvous=rendezvous, comm_name="smoke")
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda r=r: results.__setitem__(r, invoke({**base, "rank": r})))
               for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for rank in (0, 1):
        checks = results[rank]["checks"]
        assert checks["s3"]["bucket"] == world.bucket
        pairing = checks["pairing"]
        assert pairing["partner"] == 1 - rank and pairing["received"] == f"hello from rank {1 - rank}"
    assert results[0]["checks"]["pairing"]["peer"] == results[1]["checks"]["pairing"]["local"]
    assert world.keys(base["result_path"]) == [], "the selftest cleans up after itself"
