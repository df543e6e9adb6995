"""Keys set once for a stretch of work and carried by every line, in this thread and in others."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from services import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    captured = io.StringIO()
    logs.configure("json", "INFO", captured)
    yield captured
    logging.getLogger().handlers.clear()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_keys_hold_within_the_block_nest_and_are_gone_after(stream: io.StringIO) -> None:
    log = logging.getLogger("cosmic.test")
    with logs.with_keys(job_id="j", rank=1):
        logs.event(log, "outer")
        with logs.with_keys(rank=2, attempt=3):
            logs.event(log, "inner", rank=9)  # the call's own fields win
        logs.event(log, "outer_again")
        log.warning("a plain line")
    logs.event(log, "after")
    lines = _lines(stream)
    assert [{k: line.get(k) for k in ("event", "job_id", "rank", "attempt")} for line in lines] == [
        {"event": "outer", "job_id": "j", "rank": 1, "attempt": None},
        {"event": "inner", "job_id": "j", "rank": 9, "attempt": 3},
        {"event": "outer_again", "job_id": "j", "rank": 1, "attempt": None},
        {"event": "a plain line", "job_id": "j", "rank": 1, "attempt": None},
        {"event": "after", "job_id": None, "rank": None, "attempt": None}]
    assert logs.current_keys() == {}


def test_carry_takes_the_keys_into_pool_threads_and_leaves_them_there(stream: io.StringIO) -> None:
    log = logging.getLogger("cosmic.test")

    def work(index: int) -> None:
        logs.append_keys(index=index)  # this call's own copy: neither the caller nor another call sees it
        logs.event(log, "in_thread", thread=threading.current_thread().name)

    with ThreadPoolExecutor(2, thread_name_prefix="pool") as pool:
        with logs.with_keys(job_id="j"):
            carried = logs.carry(work)
            list(pool.map(carried, range(4)))
            assert logs.current_keys() == {"job_id": "j"}
        list(pool.map(work, [9]))  # not carried: no job key in the pool's threads
    lines = _lines(stream)
    assert sorted((line["job_id"], line["index"]) for line in lines[:4]) == [("j", 0), ("j", 1), ("j", 2), ("j", 3)]
    assert all(str(line["thread"]).startswith("pool") for line in lines)
    assert "job_id" not in lines[4] and lines[4]["index"] == 9
