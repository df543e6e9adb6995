"""The pairing engine: raw non-blocking sockets in one epoll set, polled in batches.

Why not one asyncio Protocol per connection: a pairing is two connections that each live for
one read and one or two writes, so the event loop's per-connection machinery (a transport, a
protocol, a reader registration, callbacks scheduled for ``connection_made`` and
``connection_lost``, ``TCP_NODELAY``, the peer name fetched again) cost more than the pairing
itself; ``bench/rendezvous_profile.py`` shows where. Here the event loop sees only one
descriptor, this engine's epoll set, and every wake-up handles every ready connection:

* accepts are batched (up to :data:`ACCEPT_BATCH` a wake-up), after the batch's other events, so
  that a waiter whose close is in the same batch is forgotten before a newcomer could meet it;
* a new connection's name is read at once, because it is usually already there (the listener
  defers each connection until its first bytes: :func:`.server.listening_socket`); only a client
  whose name has not arrived joins the epoll set at once;
* a waiter joins it at the first sweep after it began (:meth:`Hub._watch_waiters`): most are
  paired before, and a registration plus its removal at close cost more than the pairing's other
  work. Until then, the partner that comes asks the waiter directly, as epoll would have told
  (gone, or sending what it must not); a waiter that leaves with no partner coming is noticed at
  that sweep;
* the second client of a pair gets message 1 and message 2 in one 16-byte write (the bytes on the
  wire are the same two messages), each end's last write waits for its close (``MSG_MORE``) so
  that it leaves with the FIN in one segment, and the pair is closed without unregistering
  (closing a descriptor takes it out of the epoll set);
* nothing is scheduled per connection: deadlines are :class:`ExpiryBuckets` swept by the server.

Every hardening rule of :mod:`.server` is kept here, and ``tests/rendezvous`` checks each one.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import select
import selectors
import socket
import time

from services.logs import RateLimitedEvent, event
from services.rendezvous.errors import NameRejected
from services.rendezvous.expiry import ExpiryBuckets
from services.rendezvous.metrics import Metrics
from services.rendezvous.protocol import describe_name, parse_name, wire_ipv4

log = logging.getLogger("cosmic.rendezvous")

#: Most connections accepted in one wake-up, so that a burst cannot starve the waiters' events.
ACCEPT_BATCH = 256
#: Most epoll events handled in one wake-up; the rest wake the loop again at once.
EVENT_BATCH = 1024
#: The first read: a name is at most 100 bytes, and what follows a NUL in that read is padding.
FIRST_READ = 4096
#: accept() failed for lack of descriptors or memory: stop accepting for this long (as asyncio does).
ACCEPT_PAUSE = 1.0

_SEND = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)
#: A pair's last replies wait for the close that follows at once, so each goes with the FIN in one
#: segment (one segment less per connection for both ends; where MSG_MORE is missing, two).
_SEND_LAST = _SEND | getattr(socket, "MSG_MORE", 0)
_RECV = socket.MSG_DONTWAIT
_READ = select.EPOLLIN if hasattr(select, "epoll") else selectors.EVENT_READ
_NAMING, _WAITING, _DONE = 0, 1, 2
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def sweep_granularity(timeout: float) -> float:
    """How late a deadline of ``timeout`` may be swept: within an eighth of it, at most a second.
    Both hubs keep their deadlines to it (the C hub's sweep interval is set from it)."""
    return min(1.0, timeout / 8)


def rare_events() -> tuple[RateLimitedEvent, RateLimitedEvent, RateLimitedEvent]:
    """The log events of rejections, timeouts and accept failures, rate-limited: a flood of
    clients must not become a flood of log lines. Both hubs log through these."""
    return (RateLimitedEvent(log, "connection_rejected"),
            RateLimitedEvent(log, "connection_timed_out", level=logging.INFO),
            RateLimitedEvent(log, "accept_failed", level=logging.ERROR))


class _SelectorSet:
    """The part of ``select.epoll`` the hub uses, on ``selectors`` (kqueue), where epoll is missing.

    Unlike epoll, a selector must be told when a descriptor closes: :meth:`forget` does it.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def fileno(self) -> int:
        return self._selector.fileno()  # type: ignore[attr-defined]

    def register(self, fd: int, events: int) -> None:
        self._selector.register(fd, events)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    forget = unregister

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        return [(key.fd, events) for key, events in self._selector.select(timeout)[:maxevents]]

    def close(self) -> None:
        self._selector.close()


def _event_set() -> select.epoll | _SelectorSet:
    return select.epoll() if hasattr(select, "epoll") else _SelectorSet()


class Connection:
    """One pairing connection: its socket and where it is in the protocol."""

    __slots__ = ("bucket", "fd", "name", "port", "reply", "sock", "source", "state")

    def __init__(self, sock: _socket.socket, source: str, port: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.source = source
        self.port = port
        self.state = _NAMING
        self.name = b""
        self.reply = b""
        self.bucket: set[Connection] | None = None


class Hub:
    """The waiting table, the limits and the deadlines, over one epoll set.

    The pure-Python hub: the reference the C hub (:mod:`.chub`) is tested against, and the
    fallback where the C one is not built.
    """

    #: What ``COSMIC_RENDEZVOUS_HUB`` names this hub; the server logs it and ``/metrics`` shows it.
    kind = "python"

    def __init__(self, listener: socket.socket, metrics: Metrics, *, connection_cap: int, per_source_cap: int,
                 name_timeout: float, waiter_ttl: float, loop: asyncio.AbstractEventLoop) -> None:
        self.listener = listener
        self.metrics = metrics
        self.connection_cap = connection_cap
        self.per_source_cap = per_source_cap
        self.loop = loop
        self.waiting: dict[bytes, Connection] = {}
        self.per_source: dict[str, int] = {}
        self.open = 0
        self._conns: dict[int, Connection] = {}  # the ones in the epoll set, by descriptor
        self._unwatched: dict[int, Connection] = {}  # waiters that join it at the next sweep
        self._packed: dict[str, bytes] = {}  # source address -> its 4 wire bytes (sources are few)
        self._epoll = _event_set()
        #: epoll forgets a closed descriptor by itself; a selector must be told
        self._forget = getattr(self._epoll, "forget", None)
        self._listen_fd = listener.fileno()
        self._epoll.register(self._listen_fd, _READ)
        self.naming: ExpiryBuckets[Connection] = ExpiryBuckets(name_timeout, sweep_granularity(name_timeout))
        self.waiter_deadlines: ExpiryBuckets[Connection] = ExpiryBuckets(waiter_ttl, sweep_granularity(waiter_ttl))
        self.sweep_interval = min(self.naming.granularity, self.waiter_deadlines.granularity)
        self._log_rejection, self._log_timeout, self._log_accept_failure = rare_events()

    def fileno(self) -> int:
        """The epoll set's descriptor: readable whenever a connection or the listener is ready."""
        return self._epoll.fileno()

    def attach(self) -> None:
        """Start serving: the event loop polls the epoll set whenever it is readable."""
        self.loop.add_reader(self.fileno(), self.poll)

    def detach(self) -> None:
        """Stop serving (the connections stay open until :meth:`close_all`)."""
        self.loop.remove_reader(self.fileno())

    @property
    def waiters(self) -> int:
        """Named clients waiting for a partner."""
        return len(self.waiting)

    # -- one wake-up ---------------------------------------------------------------------
    def poll(self) -> None:
        """Handle every ready connection, then accept; called by the event loop's reader."""
        accept = False
        conns = self._conns
        for fd, _ in self._epoll.poll(0, EVENT_BATCH):
            conn = conns.get(fd)
            if conn is not None:
                self._readable(conn)
            elif fd == self._listen_fd:
                accept = True
        if accept:
            self._accept_batch()

    def _accept_batch(self) -> None:
        # The C-level accept and socket type: ``socket.socket.accept`` wraps the same two in
        # Python code (a subclass __init__, timeout checks) that cost a tenth of a pairing.
        accept, wrap, family = self.listener._accept, _socket.socket, self.listener.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
                sock = wrap(family, socket.SOCK_STREAM, 0, fd)
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(error)
                    return
                continue  # ECONNABORTED and the like: that client is gone, the next may not be
            self._admit(sock, address[0], address[1])

    def _pause_accepting(self, error: OSError) -> None:
        self.metrics.rejected["accept_failed"] += 1
        self._log_accept_failure(error=repr(error), pause_s=ACCEPT_PAUSE)
        self._epoll.unregister(self._listen_fd)
        self.loop.call_later(ACCEPT_PAUSE, self._epoll.register, self._listen_fd, _READ)

    # -- connection events ---------------------------------------------------------------
    def _admit(self, sock: _socket.socket, source: str, port: int) -> None:
        self.metrics.connections_total += 1
        self.open += 1
        from_source = self.per_source.get(source, 0) + 1
        self.per_source[source] = from_source
        conn = Connection(sock, source, port)
        if self.open > self.connection_cap:
            self.reject(conn, "server_full", cap=self.connection_cap)
            return
        if from_source > self.per_source_cap:
            self.reject(conn, "source_limit", cap=self.per_source_cap)
            return
        try:
            data = sock.recv(FIRST_READ, _RECV)
        except BlockingIOError:  # the name is not here yet: wait for it, for name_timeout at most
            self._conns[conn.fd] = conn
            self._epoll.register(conn.fd, _READ)
            conn.bucket = self.naming.add(conn, time.monotonic())
            return
        except OSError:
            data = b""
        if data:
            self._named(conn, data)
        else:
            self._close(conn)  # a bare connection (a health probe): forgotten, nothing written

    def _readable(self, conn: Connection) -> bool:
        """Its name, its close, or bytes it must not send; True when it had nothing to say after all."""
        try:
            data = conn.sock.recv(FIRST_READ, _RECV)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            if conn.state == _WAITING:
                self.metrics.waiters_gone_total += 1
            self._close(conn)
        elif conn.state == _NAMING:
            self._forget_deadline(conn)
            self._named(conn, data)
        else:
            self.reject(conn, "unexpected_data")
        return False

    def _named(self, conn: Connection, data: bytes) -> None:
        try:
            name = parse_name(data)
        except NameRejected as rejected:
            self.reject(conn, rejected.reason, length=len(data))
            return
        packed = self._packed.get(conn.source)
        if packed is None:
            ip = wire_ipv4(conn.source)
            if ip is None:
                self.reject(conn, "no_ipv4_address")
                return
            packed = self._packed[conn.source] = socket.inet_aton(ip)
        conn.reply = packed + conn.port.to_bytes(2, "big") + b"\0\0"
        conn.name = name
        partner = self.waiting.pop(name, None)
        while partner is not None and partner.fd in self._unwatched and not self._readable(partner):
            partner = self.waiting.pop(name, None)  # it was gone: the newcomer waits (no one else can be)
        if partner is None:
            if not self._send(conn, conn.reply):  # message 1: your address as we see it
                return
            conn.state = _WAITING
            self.waiting[name] = conn
            if conn.fd not in self._conns:
                self._unwatched[conn.fd] = conn
            conn.bucket = self.waiter_deadlines.add(conn, time.monotonic())
            return
        partner.state = conn.state = _DONE
        self.metrics.pairings_total += 1  # before the sends: a pair that has its answer finds itself counted
        self._send(conn, conn.reply + partner.reply, _SEND_LAST)  # message 1, then 2: your peer's address
        self._send(partner, conn.reply, _SEND_LAST)  # the waiter's message 2
        self._close(partner)
        self._close(conn)
        if log.isEnabledFor(logging.DEBUG):
            event(log, "paired", logging.DEBUG, name=describe_name(name),
                  a=f"{partner.source}:{partner.port}", b=f"{conn.source}:{conn.port}")

    def _send(self, conn: Connection, data: bytes, flags: int = _SEND) -> bool:
        """Write a reply; a peer that reset or went is that pairing's loss alone."""
        try:
            if conn.sock.send(data, flags) == len(data):
                return True
        except OSError:
            pass
        self._close(conn)
        return False

    def reject(self, conn: Connection, reason: str, **context: object) -> None:
        """Close without a reply, counted and logged (rate-limited) by reason."""
        self.metrics.rejected[reason] += 1
        self._log_rejection(reason=reason, source=conn.source, **context)
        self._close(conn)

    def _close(self, conn: Connection) -> None:
        """Forget ``conn`` everywhere and close it; closing takes it out of the epoll set."""
        if conn.fd < 0:
            return
        if self._conns.pop(conn.fd, None) is not None and self._forget is not None:
            self._forget(conn.fd)
        self._unwatched.pop(conn.fd, None)
        conn.fd = -1
        if conn.state == _WAITING and self.waiting.get(conn.name) is conn:
            del self.waiting[conn.name]
        conn.state = _DONE
        self._forget_deadline(conn)
        self.open -= 1
        remaining = self.per_source[conn.source] - 1
        if remaining:
            self.per_source[conn.source] = remaining
        else:
            del self.per_source[conn.source]
        conn.sock.close()

    # -- deadlines -----------------------------------------------------------------------
    def _forget_deadline(self, conn: Connection) -> None:
        if conn.bucket is not None:
            conn.bucket.discard(conn)
            conn.bucket = None

    def sweep(self) -> None:
        """Close every connection whose name or partner is overdue (called every sweep_interval)."""
        now = time.monotonic()
        for conn in self.naming.pop_expired(now):
            self._expire(conn, "name")
        for conn in self.waiter_deadlines.pop_expired(now):
            self._expire(conn, "waiter_ttl")
        self._watch_waiters()

    def _watch_waiters(self) -> None:
        """Every waiter that began since the last sweep joins the epoll set (see the module's docstring)."""
        unwatched, self._unwatched = self._unwatched, {}
        for fd, conn in unwatched.items():
            try:
                self._epoll.register(fd, _READ)
            except OSError:  # out of memory or of epoll watches: a waiter we cannot watch is dropped
                self._close(conn)
                continue
            self._conns[fd] = conn

    def _expire(self, conn: Connection, kind: str) -> None:
        conn.bucket = None
        self.metrics.timeouts[kind] += 1
        self._log_timeout(kind=kind, source=conn.source, name=describe_name(conn.name))
        self._close(conn)

    def close_all(self) -> int:
        """Close every client without a reply (shutdown) and the epoll set; returns how many were open."""
        conns = [*self._conns.values(), *self._unwatched.values()]
        for conn in conns:
            self._close(conn)
        self.metrics.rejected["shutdown"] += len(conns)
        self._epoll.close()
        return len(conns)
