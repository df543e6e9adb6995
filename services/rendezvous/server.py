"""The rendezvous server: TCPunch's pairing protocol on asyncio, hardened against its clients.

Wire behaviour is the reference server's, byte for byte (see :mod:`.protocol`). What differs is
what happens when clients misbehave; each case below is a way the reference server dies or
stalls, and each has a test:

* a connection that closes without a name (a health probe) is forgotten; nothing is written;
* a silent connection costs nothing but its descriptor, and is dropped after ``name_timeout``;
* a waiter that disconnects is removed from the waiting table at once, so nobody is paired
  with a dead socket; a waiter nobody joins is closed after ``waiter_ttl``;
* connections beyond the descriptor budget or a per-source cap are closed at once, with a
  rate-limited log line, instead of crashing accept();
* a peer that resets mid-reply is the transport's error alone: the loop goes on;
* SIGTERM closes the listener and every open client without a word, and exits cleanly.

One asyncio Protocol per connection and one periodic sweep for all deadlines keep the hot path
to a dictionary lookup and two 8-byte writes per client.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
from typing import Any

from services.logs import RateLimitedEvent, event
from services.rendezvous import health
from services.rendezvous.config import ServerSettings
from services.rendezvous.expiry import ExpiryBuckets
from services.rendezvous.metrics import Metrics
from services.rendezvous.protocol import NameRejected, describe_name, encode_address, parse_name, wire_ipv4

log = logging.getLogger("cosmic.rendezvous")

#: Descriptors kept back from the connection cap for listeners, the health port, the event
#: loop's own and the logs, so that the cap is reached before accept() runs out.
FD_RESERVE = 32

_NAMING, _WAITING, _DONE = 0, 1, 2


class _Client(asyncio.Protocol):
    """One pairing connection; the state machine lives in :class:`_Hub`."""

    __slots__ = ("bucket", "hub", "name", "port", "reply", "source", "state", "transport")

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.transport: Any = None
        self.source = ""
        self.port = 0
        self.state = _NAMING
        self.name = b""
        self.reply = b""
        self.bucket: set[_Client] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.hub.admit(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _NAMING:
            self.hub.named(self, data)
        elif self.state == _WAITING:
            self.hub.reject(self, "unexpected_data")

    def eof_received(self) -> bool:
        return False  # a half-closed client is gone: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.lost(self)


class _Hub:
    """The waiting table, the limits and the deadlines shared by every connection."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, loop: asyncio.AbstractEventLoop,
                 connection_cap: int) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loop = loop
        self.connection_cap = connection_cap
        self.waiting: dict[bytes, _Client] = {}
        self.per_source: dict[str, int] = {}
        self.open = 0
        # Deadlines are kept within an eighth of their timeout (at most a second late).
        self.naming: ExpiryBuckets[_Client] = ExpiryBuckets(settings.name_timeout,
                                                            min(1.0, settings.name_timeout / 8))
        self.waiter_deadlines: ExpiryBuckets[_Client] = ExpiryBuckets(settings.waiter_ttl,
                                                                      min(1.0, settings.waiter_ttl / 8))
        self.sweep_interval = min(self.naming.granularity, self.waiter_deadlines.granularity)
        self._log_rejection = RateLimitedEvent(log, "connection_rejected")
        self._log_timeout = RateLimitedEvent(log, "connection_timed_out", level=logging.INFO)

    # -- connection events ---------------------------------------------------------------
    def admit(self, client: _Client) -> None:
        self.metrics.connections_total += 1
        self.open += 1
        peer = client.transport.get_extra_info("peername")
        if peer is None:  # uvloop: the client reset between the kernel's accept and ours
            self.reject(client, "gone_before_accept")
            return
        client.source, client.port = peer[0], peer[1]
        from_source = self.per_source.get(client.source, 0) + 1
        self.per_source[client.source] = from_source
        if self.open > self.connection_cap:
            self.reject(client, "server_full", cap=self.connection_cap)
        elif from_source > self.settings.max_per_source:
            self.reject(client, "source_limit", cap=self.settings.max_per_source)
        else:
            client.bucket = self.naming.add(client, self.loop.time())

    def named(self, client: _Client, data: bytes) -> None:
        self._forget_deadline(client)
        try:
            name = parse_name(data)
        except NameRejected as rejected:
            self.reject(client, rejected.reason, length=len(data))
            return
        ip = wire_ipv4(client.source)
        if ip is None:
            self.reject(client, "no_ipv4_address")
            return
        client.reply = encode_address(ip, client.port)
        client.name = name
        client.transport.write(client.reply)  # message 1: your address as we see it
        partner = self.waiting.pop(name, None)
        if partner is None or partner.transport.is_closing():
            client.state = _WAITING
            self.waiting[name] = client
            client.bucket = self.waiter_deadlines.add(client, self.loop.time())
            return
        self._forget_deadline(partner)
        partner.state = client.state = _DONE
        partner.transport.write(client.reply)  # message 2: your peer's address
        client.transport.write(partner.reply)
        partner.transport.close()
        client.transport.close()
        self.metrics.pairings_total += 1
        if log.isEnabledFor(logging.DEBUG):
            event(log, "paired", logging.DEBUG, name=describe_name(name),
                  a=f"{partner.source}:{partner.port}", b=f"{client.source}:{client.port}")

    def lost(self, client: _Client) -> None:
        self.open -= 1
        if client.source:
            remaining = self.per_source[client.source] - 1
            if remaining:
                self.per_source[client.source] = remaining
            else:
                del self.per_source[client.source]
        if client.state == _WAITING:
            if self.waiting.get(client.name) is client:
                del self.waiting[client.name]
            self.metrics.waiters_gone_total += 1
        self._forget_deadline(client)
        client.state = _DONE

    def reject(self, client: _Client, reason: str, **context: object) -> None:
        if client.state == _WAITING and self.waiting.get(client.name) is client:
            del self.waiting[client.name]
        self._forget_deadline(client)
        client.state = _DONE
        self.metrics.rejected[reason] += 1
        self._log_rejection(reason=reason, source=client.source, **context)
        client.transport.close()

    # -- deadlines -----------------------------------------------------------------------
    def _forget_deadline(self, client: _Client) -> None:
        if client.bucket is not None:
            client.bucket.discard(client)
            client.bucket = None

    def sweep(self) -> None:
        now = self.loop.time()
        for client in self.naming.pop_expired(now):
            self._expire(client, "name")
        for client in self.waiter_deadlines.pop_expired(now):
            if self.waiting.get(client.name) is client:
                del self.waiting[client.name]
            self._expire(client, "waiter_ttl")

    def _expire(self, client: _Client, kind: str) -> None:
        client.bucket = None
        client.state = _DONE
        self.metrics.timeouts[kind] += 1
        self._log_timeout(kind=kind, source=client.source, name=describe_name(client.name))
        client.transport.close()

    def close_all(self) -> int:
        """Close every client without a reply (shutdown); returns how many were open."""
        closed = 0
        for client in [*self.naming.drain(), *self.waiter_deadlines.drain()]:
            client.bucket = None
            client.state = _DONE
            client.transport.close()
            closed += 1
        self.waiting.clear()
        self.metrics.rejected["shutdown"] += closed
        return closed


def connection_cap(requested: int) -> tuple[int, int]:
    """The connection cap the descriptor limit allows, raising the soft limit to the hard one.

    Returns ``(cap, fd_limit)``. Refusing at the cap is what keeps accept() from failing.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # some sandboxes refuse; the soft limit then stands and the cap follows it
    return max(1, min(requested, soft - FD_RESERVE)), soft


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking socket; ``::`` listens on IPv4 and IPv6 alike."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class RendezvousServer:
    """A running rendezvous server: pairing listener, health listener and deadline sweep."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        self.metrics = Metrics()
        self._hub: _Hub | None = None
        self._server: asyncio.AbstractServer | None = None
        self._health: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._log_accept_failure = RateLimitedEvent(log, "accept_failed", level=logging.ERROR)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the pairing listener."""
        assert self._server is not None, "server not started"
        return self._server.sockets[0].getsockname()[:2]

    @property
    def health_address(self) -> tuple[str, int] | None:
        return self._health.sockets[0].getsockname()[:2] if self._health else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        cap, fd_limit = connection_cap(settings.max_connections)
        self._hub = hub = _Hub(settings, self.metrics, loop, cap)
        loop.set_exception_handler(self._on_loop_error)
        sock = listening_socket(settings.host, settings.port, settings.backlog)
        self._server = await loop.create_server(lambda: _Client(hub), sock=sock, backlog=settings.backlog)
        if settings.health_port >= 0:
            self._health = await health.start(settings.health_host, settings.health_port, self)
        self._schedule_sweep()
        event(log, "listening", host=self.address[0], port=self.address[1],
              health=":".join(map(str, self.health_address)) if self._health else "off",
              connection_cap=cap, fd_limit=fd_limit, loop=type(loop).__module__.split(".")[0],
              name_timeout=settings.name_timeout, waiter_ttl=settings.waiter_ttl,
              max_per_source=settings.max_per_source)

    def _schedule_sweep(self) -> None:
        assert self._hub is not None
        self._hub.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(self._hub.sweep_interval, self._schedule_sweep)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio reports accept() failures (EMFILE/ENFILE) here and retries a second later;
        # count and log them instead of letting them pass as an anonymous traceback.
        message = str(context.get("message", ""))
        error = repr(context.get("exception"))
        if "accept" in message:
            self.metrics.rejected["accept_failed"] += 1
            self._log_accept_failure(message=message, error=error)
        else:
            event(log, "loop_error", logging.ERROR, message=message, error=error)

    def render_metrics(self) -> str:
        hub = self._hub
        assert hub is not None
        return self.metrics.render(waiters=len(hub.waiting), open_connections=hub.open,
                                   connection_cap=hub.connection_cap)

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def stop(self) -> None:
        """Stop listening, close every client without a reply, stop the sweep and the health port."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        closed = self._hub.close_all() if self._hub else 0
        if self._health is not None:
            self._health.close()
        await asyncio.sleep(0)  # let the transports flush their FINs
        event(log, "stopped", closed_clients=closed, pairings=self.metrics.pairings_total)

    async def serve_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly (ECS stops a task with SIGTERM)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        event(log, "signal_received")
        await self.stop()
