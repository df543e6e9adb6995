"""Moving framed messages over several links at once, both ways, against one deadline.

A collective step sends to some peers while it receives from others (or from the same one), so
each step is one :func:`exchange`: a selector loop over non-blocking sockets that writes what
the peers can take and reads what they send, until every message is out and every expected one
is in. Sending and receiving at once is what keeps two ranks that swap large arrays from
deadlocking on full socket buffers; reading frame by frame, straight into freshly allocated
arrays, is what keeps large messages from being copied.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from services.rendezvous import values
from services.rendezvous.errors import CollectiveMismatch, CollectiveTimeout, RankFailed
from services.rendezvous.frames import (
    HEADER_SIZE,
    MAX_METADATA,
    MAX_PAYLOAD,
    FrameError,
    Kind,
    Op,
    pack_header,
    unpack_header,
)

#: At most this many buffers per sendmsg() call (Linux's IOV_MAX is 1024).
_IOV_BATCH = 512
_EOF_KINDS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class Items(list):  # type: ignore[type-arg]
    """A list sent element by element (a LIST frame, then one frame per element), so that
    arrays inside it travel raw. Plain lists are pickled whole like any other object."""


def frames(value: Any, op: Op, seq: int) -> list[values.Buffer]:
    """The buffers that carry ``value`` (header, metadata, payload; recursively for Items)."""
    if isinstance(value, Items):
        out: list[values.Buffer] = [pack_header(Kind.LIST, op, seq, str(len(value)).encode(), 0)]
        for item in value:
            out += frames(item, op, seq)
        return out
    encoded = values.encode(value)
    return [pack_header(encoded.kind, op, seq, encoded.metadata, encoded.payload_size), *encoded.payload]


def abort_frame(op: Op, seq: int, failed_rank: int, reason: str) -> bytes:
    payload = json.dumps({"failed_rank": failed_rank, "reason": reason}).encode()
    return pack_header(Kind.ABORT, op, seq, b"", len(payload)) + payload


class Interrupt:
    """Ends a rank's waits from another thread: a socket pair whose read end the waits watch.

    A worker's watcher sets it when the coordinator says a peer failed or the job was cancelled,
    so that the rank leaves a collective at once instead of waiting out its deadline for a peer
    that will never come. ``set`` is thread-safe and idempotent; the sockets are made only when a
    wait first needs them, so a communicator that never waits holds none.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self.reason: str | None = None
        self.failed_rank: int | None = None

    @property
    def reader(self) -> socket.socket:
        """The end a wait watches: readable once the interrupt is set (even if it was set before)."""
        with self._lock:
            if self._pair is None:
                self._pair = socket.socketpair()
                self._pair[0].setblocking(False)
                if self.reason is not None:
                    self._pair[1].send(b"!")
            return self._pair[0]

    def set(self, reason: str, failed_rank: int) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self.failed_rank = reason, failed_rank
            if self._pair is not None:
                with contextlib.suppress(OSError):
                    self._pair[1].send(b"!")

    @property
    def is_set(self) -> bool:
        return self.reason is not None

    def error(self, rank: int) -> RankFailed:
        return RankFailed(f"interrupted: {self.reason}", rank=rank,
                          failed_rank=self.failed_rank if self.failed_rank is not None else rank)

    def close(self) -> None:
        with self._lock:
            pair, self._pair = self._pair, None
        for sock in pair or ():
            sock.close()


class _Outgoing:
    """What is left to write to one peer."""

    def __init__(self, buffers: list[values.Buffer]) -> None:
        self.pending = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]

    def write(self, sock: socket.socket) -> bool:
        """Write what the socket takes now; True when everything is out."""
        while self.pending:
            try:
                sent = sock.sendmsg(self.pending[:_IOV_BATCH])
            except BlockingIOError:
                return False
            while sent:
                head = self.pending[0]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    self.pending.pop(0)
                else:
                    self.pending[0] = head[sent:]
                    sent = 0
        return True


class _Incoming:
    """One message being read from one peer, frame by frame."""

    def __init__(self, peer: int, rank: int, op: Op, seq: int, into: Any = None) -> None:
        self.peer, self.rank, self.op, self.seq, self.into = peer, rank, op, seq, into
        self.header = bytearray(HEADER_SIZE)
        self.target = memoryview(self.header)
        self.got = 0
        self.stage = "header"
        self.kind = Kind.BYTES
        self.meta_size = self.payload_size = 0
        self.holder: Any = None
        self.open_lists: list[tuple[Items, int]] = []
        self.value: Any = None
        self.done = False

    def read(self, sock: socket.socket) -> bool:
        """Read what has arrived, never past this message; True when it is complete."""
        while not self.done:
            want = self.target.nbytes - self.got
            if want:
                try:
                    n = sock.recv_into(self.target[self.got:], want)
                except BlockingIOError:
                    return False
                if n == 0:
                    raise RankFailed(f"link to rank {self.peer} closed in the middle of {self.op.name.lower()}",
                                     rank=self.rank, failed_rank=self.peer)
                self.got += n
                if n < want:
                    continue
            self._advance()
        return True

    def _advance(self) -> None:
        if self.stage == "header":
            try:
                self.kind, op, seq, self.meta_size, self.payload_size = unpack_header(self.header)
            except FrameError as exc:
                raise CollectiveMismatch(f"garbage from rank {self.peer}: {exc}", rank=self.rank) from None
            if self.kind is not Kind.ABORT and (op is not self.op or seq != self.seq):
                raise CollectiveMismatch(
                    f"rank {self.peer} sent {op.name.lower()} #{seq} while this rank runs "
                    f"{self.op.name.lower()} #{self.seq}: ranks called different collectives", rank=self.rank)
            if self.meta_size > MAX_METADATA or self.payload_size > MAX_PAYLOAD:
                raise CollectiveMismatch(f"rank {self.peer} announced an oversized frame ({self.meta_size} bytes "
                                         f"of metadata, {self.payload_size} of payload)", rank=self.rank)
            self._expect("meta", bytearray(self.meta_size))
        elif self.stage == "meta":
            metadata = bytes(self.target)
            if self.kind is Kind.LIST:
                self.open_lists.append((Items(), int(metadata or b"0")))
                self._finish_frame(None)
                return
            try:
                self.holder, target = values.allocate(self.kind, metadata, self.payload_size, self.into)
            except (ValueError, ImportError) as exc:
                raise CollectiveMismatch(f"unusable frame from rank {self.peer}: {exc}", rank=self.rank) from None
            self.stage, self.target, self.got = "payload", target, 0
        else:
            if self.kind is Kind.ABORT:
                report = json.loads(bytes(self.holder))
                raise RankFailed(f"rank {self.peer} aborted the job: {report['reason']}", rank=self.rank,
                                 failed_rank=int(report["failed_rank"]))
            self._finish_frame(values.decode(self.kind, self.holder))

    def _expect(self, stage: str, buffer: bytearray) -> None:
        self.stage, self.target, self.got = stage, memoryview(buffer), 0

    def _finish_frame(self, value: Any) -> None:
        if self.kind is not Kind.LIST:
            self._complete(value)
        elif self.open_lists[-1][1] == 0:
            self._complete(self.open_lists.pop()[0])
        self.header = bytearray(HEADER_SIZE)
        if not self.done:
            self._expect("header", self.header)

    def _complete(self, value: Any) -> None:
        while self.open_lists:
            items, remaining = self.open_lists[-1]
            items.append(value)
            if remaining - 1 > 0:
                self.open_lists[-1] = (items, remaining - 1)
                return
            self.open_lists.pop()
            value = items
        self.value, self.done = value, True


def exchange(links: Mapping[int, socket.socket], rank: int, op: Op, seq: int, sends: Mapping[int, Any],
             receives: list[int], deadline: float, into: Mapping[int, Any] | None = None,
             wake: Interrupt | None = None) -> dict[int, Any]:
    """Send ``sends[peer]`` to each peer and read one message from each of ``receives``, at once.

    ``into[peer]``, when given, is an array that peer's array is received into (no allocation).
    ``wake``, when set from another thread, ends the wait at once with its error.

    Returns ``{peer: value}`` for the receives. Raises CollectiveTimeout naming the peers still
    pending at ``deadline`` (a ``time.monotonic()`` instant), RankFailed when a link dies, and
    CollectiveMismatch when a peer sends a frame of another operation.
    """
    outgoing = {peer: _Outgoing(frames(value, op, seq)) for peer, value in sends.items()}
    incoming = {peer: _Incoming(peer, rank, op, seq, (into or {}).get(peer)) for peer in receives}
    with selectors.DefaultSelector() as selector:
        for peer in {*outgoing, *incoming}:
            events = (selectors.EVENT_WRITE if peer in outgoing else 0) | (
                selectors.EVENT_READ if peer in incoming else 0)
            selector.register(links[peer], events, peer)
        if wake is not None:
            selector.register(wake.reader, selectors.EVENT_READ, None)
        while outgoing or any(not message.done for message in incoming.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = sorted({*outgoing, *(p for p, m in incoming.items() if not m.done)})
                raise CollectiveTimeout(f"{op.name.lower()} #{seq} timed out waiting for ranks {waiting}",
                                        rank=rank, peers=waiting)
            for key, mask in selector.select(remaining):
                if key.data is None and wake is not None:
                    raise wake.error(rank)
                peer, sock = key.data, key.fileobj
                try:
                    if mask & selectors.EVENT_READ:
                        incoming[peer].read(sock)  # type: ignore[arg-type]
                    if mask & selectors.EVENT_WRITE and outgoing[peer].write(sock):  # type: ignore[arg-type]
                        del outgoing[peer]
                except _EOF_KINDS as exc:
                    raise RankFailed(f"link to rank {peer} failed during {op.name.lower()}: {exc}",
                                     rank=rank, failed_rank=peer) from None
                wanted = (selectors.EVENT_WRITE if peer in outgoing else 0) | (
                    selectors.EVENT_READ if peer in incoming and not incoming[peer].done else 0)
                if not wanted:
                    selector.unregister(sock)
                elif wanted != key.events:
                    selector.modify(sock, wanted, peer)
    return {peer: message.value for peer, message in incoming.items()}

