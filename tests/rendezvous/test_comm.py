"""The communicator: every collective against numpy, ranks as processes, faults that must not hang."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import secrets
import threading
import time
from typing import Any

import numpy as np
import pytest

from services.rendezvous import CommError, Communicator
from services.rendezvous.comm import fmi_settings, link_name
from services.rendezvous.errors import RankFailed
from tests.rendezvous.comm_ranks import run_rank
from tests.rendezvous.conftest import ServerProcess

SPAWN = multiprocessing.get_context("spawn")


def run_ranks(server: ServerProcess, scenario: str, world_size: int, *, timeout: float = 30.0,
              ranks: list[int] | None = None, env: dict[str, str] | None = None, comm_name: str | None = None,
              wait: float = 120.0) -> dict[int, dict[str, Any]]:
    """Run ``scenario`` on ``ranks`` (default: all) as separate processes; returns each rank's outcome."""
    comm_name = comm_name or secrets.token_hex(16)
    results = SPAWN.Queue()
    ranks = list(range(world_size)) if ranks is None else ranks
    processes = [SPAWN.Process(target=run_rank, args=(scenario, rank, world_size, comm_name, server.port, timeout,
                                                      results, env or {})) for rank in ranks]
    for process in processes:
        process.start()
    outcomes: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + wait
    try:
        while len(outcomes) < len(ranks) and time.monotonic() < deadline:
            try:
                rank, outcome = results.get(timeout=0.5)
            except queue.Empty:
                if all(not p.is_alive() for p in processes) and results.empty():
                    break
                continue
            outcomes[rank] = outcome
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    return outcomes


def assert_all_ok(outcomes: dict[int, dict[str, Any]], world_size: int) -> None:
    assert sorted(outcomes) == list(range(world_size)), f"missing ranks: {outcomes}"
    failures = {rank: o.get("trace") for rank, o in outcomes.items() if not o["ok"]}
    assert not failures, "\n".join(f"rank {rank}:\n{trace}" for rank, trace in failures.items())


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 8])
def test_every_collective_matches_numpy(server: ServerProcess, world_size: int) -> None:
    outcomes = run_ranks(server, "all_collectives", world_size)
    assert_all_ok(outcomes, world_size)
    assert all(o["checked"] > 100 for o in outcomes.values())


def test_torch_tensors_travel_raw(server: ServerProcess) -> None:
    pytest.importorskip("torch")
    assert_all_ok(run_ranks(server, "tensors", 3), 3)


def test_concurrent_communicators_never_cross(server: ServerProcess) -> None:
    """Three jobs with the same world size on one server, at once: each sees only its own ranks."""
    jobs = {f"job{index}": secrets.token_hex(16) for index in range(3)}
    context = SPAWN
    results = context.Queue()
    processes = []
    for job, name in jobs.items():
        for rank in range(3):
            processes.append((job, context.Process(target=run_rank, args=(
                "identify", rank, 3, name, server.port, 30.0, results, {"COMM_TEST_JOB": job}))))
    for _, process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for _, process in processes:
        process.join(timeout=10)
    assert all(o["ok"] for _, o in outcomes), outcomes
    assert sorted(o["seen"][0] for _, o in outcomes) == sorted([*jobs] * 3)
    assert all(len(o["seen"]) == 1 and o["total"] == 3.0 for _, o in outcomes)


@pytest.mark.timeout(300)
def test_soak_large_messages_do_not_stall(server: ServerProcess) -> None:
    """FMI's links on AWS stalled after 16-64 kB (spcl/fmi#9): 100 x 4 MiB and 1 x 64 MiB at 8 ranks."""
    outcomes = run_ranks(server, "soak", 8, timeout=120, wait=280)
    assert_all_ok(outcomes, 8)
    print("soak seconds per rank:", sorted(o["seconds"] for o in outcomes.values()))


def test_a_killed_rank_fails_everyone_fast_naming_it(server: ServerProcess) -> None:
    outcomes = run_ranks(server, "killed", 4, timeout=10)
    survivors = {rank: o for rank, o in outcomes.items() if rank != 2}
    assert sorted(survivors) == [0, 1, 3]
    for rank, outcome in survivors.items():
        assert outcome["error"] == "RankFailed", (rank, outcome)
        assert outcome["failed_rank"] == 2, (rank, outcome)
        assert outcome["seconds"] < 5, "well within the 10 s deadline"


def test_mismatched_collectives_raise_instead_of_corrupting(server: ServerProcess) -> None:
    outcomes = run_ranks(server, "mismatched", 2, timeout=5)
    errors = {o["error"] for o in outcomes.values()}
    assert "CollectiveMismatch" in errors, outcomes
    assert errors <= {"CollectiveMismatch", "RankFailed"}, outcomes
    assert all(o["seconds"] < 5 for o in outcomes.values())


def test_absent_rank_is_named_within_the_deadline_and_late_ones_are_waited_for(server: ServerProcess) -> None:
    outcomes = run_ranks(server, "late_or_absent", 4, ranks=[0, 1, 2], timeout=3)
    assert sorted(outcomes) == [0, 1, 2]
    for rank, outcome in outcomes.items():
        assert outcome["error"] in ("CollectiveTimeout", "RankFailed"), (rank, outcome)
        assert outcome["seconds"] < 5, (rank, outcome)
    # recursive doubling at 4 ranks: 1 and 2 wait on 3 directly; 0 waits on 2, stuck behind 3
    for rank in (1, 2):
        assert outcomes[rank]["peers"] == [3] or "rank 3" in outcomes[rank]["message"], outcomes[rank]
    in_time = run_ranks(server, "late_but_in_time", 3, timeout=10)
    assert_all_ok(in_time, 3)
    assert {o["sum"] for o in in_time.values()} == {3}


def _interrupted_after(comm: Communicator, call: Any, delay: float, failed_rank: int) -> tuple[Exception, float]:
    """Run ``call(comm)`` in this thread, interrupt it from another after ``delay``; the error and when."""
    timer = threading.Timer(delay, comm.interrupt, args=("the coordinator saw that rank fail", failed_rank))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(RankFailed) as raised:
            call(comm)
    finally:
        timer.cancel()
    return raised.value, time.monotonic() - started


def test_interrupt_ends_a_wait_for_a_rank_that_never_comes_to_pair(server: ServerProcess) -> None:
    """A crashed rank never pairs: its peers left at once when told, not at the deadline (120 s in jobs)."""
    with Communicator(0, 2, secrets.token_hex(16), "127.0.0.1", server.port, timeout=30) as comm:
        error, took = _interrupted_after(comm, lambda c: c.allreduce(np.ones(4)), 0.5, failed_rank=1)
    assert took < 3 and error.failed_rank == 1 and "interrupted" in str(error), (took, error)
    with pytest.raises(CommError):
        comm.barrier()  # closed


def test_interrupt_ends_a_collective_waiting_on_a_linked_peer(server: ServerProcess) -> None:
    """Linked, but the peer never sends (stuck, or died after pairing): the exchange wait ends too."""
    name = secrets.token_hex(16)
    peer_linked = threading.Event()

    def idle_peer() -> None:
        with Communicator(1, 2, name, "127.0.0.1", server.port, timeout=30) as peer:
            peer.connect_all()
            peer_linked.set()
            with contextlib.suppress(CommError):
                peer.recv(0)  # the abort frame ends this wait too

    thread = threading.Thread(target=idle_peer)
    thread.start()
    with Communicator(0, 2, name, "127.0.0.1", server.port, timeout=30) as comm:
        comm.connect_all()
        assert peer_linked.wait(10)
        error, took = _interrupted_after(comm, lambda c: c.allreduce(np.ones(4)), 0.5, failed_rank=1)
    thread.join(10)
    assert not thread.is_alive() and took < 3 and error.failed_rank == 1, (took, error)


def test_link_names_are_symmetric_unambiguous_and_short() -> None:
    assert link_name("job", 3, 7) == link_name("job", 7, 3)
    assert link_name("x1", 1, 2) != link_name("x", 11, 2), "FMI's <comm_name><a>_<b> collides here"
    assert link_name("job-a", 0, 1) != link_name("job-b", 0, 1)
    assert len(link_name("n" * 500, 999_998, 999_999).encode()) <= 100


def test_fmi_json_settings(tmp_path) -> None:
    config = tmp_path / "fmi.json"
    config.write_text('{"backends": {"Direct": {"enabled": true, "host": "rv.example.org", "port": 10000,'
                      ' "max_timeout": 1500}}}')
    assert fmi_settings(config) == ("rv.example.org", 10000, 1.5)
    comm = Communicator(0, 2, "job", fmi_config=config)
    assert (comm.host, comm.port, comm.timeout) == ("rv.example.org", 10000, 1.5)
    with pytest.raises(ValueError, match="Direct"):
        fmi_settings({"backends": {}})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Communicator(2, 2, "job", "127.0.0.1")
    with pytest.raises(ValueError):
        Communicator(0, 2, "", "127.0.0.1")
    with Communicator(0, 2, "job", "127.0.0.1") as comm:
        with pytest.raises(ValueError, match="itself"):
            comm.send(1, 0)
        with pytest.raises(ValueError):
            comm.scatter([1], root=0)
    with pytest.raises(CommError, match="closed"):
        comm.barrier()
