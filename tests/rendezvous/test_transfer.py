"""Frames and the exchange loop, in one process over socket pairs: values, sizes, garbage."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from services.rendezvous.errors import CollectiveMismatch, CollectiveTimeout, RankFailed
from services.rendezvous.frames import HEADER, Kind, Op, pack_header
from services.rendezvous.transfer import Items, abort_frame, exchange


@pytest.fixture
def link() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def swap(link: tuple[socket.socket, socket.socket], value: object, op: Op = Op.P2P, seq: int = 0) -> object:
    """Rank 0 sends ``value`` to rank 1 while rank 1 sends it back: both ways at once."""
    a, b = link
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(
        b=exchange({0: b}, 1, op, seq, {0: value}, [0], time.monotonic() + 10)[0]))
    thread.start()
    got = exchange({1: a}, 0, op, seq, {1: value}, [1], time.monotonic() + 10)[1]
    thread.join()
    return got


@pytest.mark.parametrize("value", [
    np.array(3.5, dtype=np.float32),  # 0-d stays 0-d
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.arange(20, dtype=np.float64)[::3],  # not contiguous: copied once, arrives contiguous
    np.zeros((0, 5), dtype=np.float32),
    np.arange(6 << 20, dtype=np.uint8),  # 6 MiB each way at once: more than socket buffers hold
])
def test_arrays_arrive_exactly(link, value: np.ndarray) -> None:
    got = swap(link, value)
    assert isinstance(got, np.ndarray) and got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)


@pytest.mark.parametrize("value", [b"", b"raw bytes", {"a": [1, 2.5, None]}, "text", 7, None])
def test_other_values(link, value: object) -> None:
    assert swap(link, value) == value


def test_items_nest_and_keep_arrays_raw(link) -> None:
    value = Items([[3, 1], np.arange(4), Items([]), Items([b"x", np.ones(2)])])
    got = swap(link, value)
    assert isinstance(got, Items) and got[0] == [3, 1] and got[2] == []
    np.testing.assert_array_equal(got[1], np.arange(4))
    np.testing.assert_array_equal(got[3][1], np.ones(2))


def test_frame_of_another_operation_is_a_mismatch(link) -> None:
    a, b = link
    b.sendall(pack_header(Kind.BYTES, Op.GATHER, 4, b"", 0))
    with pytest.raises(CollectiveMismatch, match="gather #4 while this rank runs bcast #4"):
        exchange({1: a}, 0, Op.BCAST, 4, {}, [1], time.monotonic() + 2)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\n\r\nxxxxxxxxxx",
    HEADER.pack(b"CR", 1, 99, 0, 0, 0, 0),
    HEADER.pack(b"CR", 1, Kind.BYTES, Op.P2P, 0, 0, 1 << 40),  # a 1 TiB payload announced
])
def test_garbage_is_refused_before_allocation(link, raw: bytes) -> None:
    a, b = link
    b.sendall(raw)
    with pytest.raises(CollectiveMismatch):
        exchange({1: a}, 0, Op.P2P, 0, {}, [1], time.monotonic() + 2)


def test_abort_frame_names_the_failed_rank(link) -> None:
    a, b = link
    b.sendall(abort_frame(Op.ALLREDUCE, 2, 5, "rank 5 died"))
    with pytest.raises(RankFailed) as caught:
        exchange({1: a}, 0, Op.ALLREDUCE, 2, {}, [1], time.monotonic() + 2)
    assert caught.value.failed_rank == 5


def test_closed_link_and_silence(link) -> None:
    a, b = link
    started = time.monotonic()
    with pytest.raises(CollectiveTimeout) as caught:
        exchange({1: a}, 0, Op.BARRIER, 0, {}, [1], time.monotonic() + 0.2)
    assert caught.value.peers == [1] and time.monotonic() - started < 1
    b.close()
    with pytest.raises(RankFailed) as gone:
        exchange({1: a}, 0, Op.BARRIER, 0, {}, [1], time.monotonic() + 2)
    assert gone.value.failed_rank == 1
