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

The connections live in a hub's own epoll set: the C hub (:mod:`.chub`, an optional build)
serves it on a thread of its own, the pure-Python :class:`.hub.Hub` through the event loop, which
watches it as one descriptor; one periodic sweep handles every deadline. The event loop (uvloop
when installed) serves the health port, the signals and the sweep.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import signal
import socket
from typing import Any

from services.logs import event
from services.rendezvous import health
from services.rendezvous.chub import CHub, hub_class
from services.rendezvous.config import ServerSettings
from services.rendezvous.hub import Hub
from services.rendezvous.metrics import Metrics

log = logging.getLogger("cosmic.rendezvous")

#: Descriptors kept back from the connection cap for listeners, the health port, the event
#: loop's own and the logs, so that the cap is reached before accept() runs out.
FD_RESERVE = 32


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


def per_source_cap(budget: int, share: float, floor: int, ceiling: int) -> int:
    """How many open connections one source address may hold: a share of the budget, with a floor.

    Two rules meet here. Fairness: one source (a host, or a NAT) may hold only ``share`` of the
    connection budget, so the others keep the rest: with the hard descriptor limit at 2,048 the
    budget is 2,016 and one source gets 1,008, where a flat cap of 10,000 let it take all.
    Service: a job whose ranks all come from one address (one NAT, or the embedded stack on
    127.0.0.1) holds one connection per link being paired, until the partner arrives: one or
    two per rank at a time in an allreduce, so a job fits while its ranks pairing at once fit in
    the share, and one source gets ``floor`` connections at least, however small the budget
    (below ``floor / share`` the floor wins, and one source can again fill the server: raise the
    descriptor limit there). ``ceiling`` (``max_per_source``) bounds it from above.
    """
    return max(1, min(ceiling, budget, max(floor, math.ceil(share * budget))))


def listening_socket(host: str, port: int, backlog: int, defer_accept: int = 0) -> socket.socket:
    """A bound, listening, non-blocking socket; ``::`` listens on IPv4 and IPv6 alike.

    ``defer_accept`` > 0: connections are accepted once their first bytes came, or after that
    many seconds (TCP_DEFER_ACCEPT; where the platform has none, at once).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if defer_accept and hasattr(socket, "TCP_DEFER_ACCEPT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
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
        self._hub: Hub | CHub | None = None
        self._listener: socket.socket | None = None
        self._health: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the pairing listener."""
        assert self._listener is not None, "server not started"
        return self._listener.getsockname()[:2]

    @property
    def health_address(self) -> tuple[str, int] | None:
        return self._health.sockets[0].getsockname()[:2] if self._health else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        cap, fd_limit = connection_cap(settings.max_connections)
        source_cap = per_source_cap(cap, settings.per_source_share, settings.per_source_floor,
                                    settings.max_per_source)
        engine = hub_class(settings.hub)  # before listening: hub=c without the C hub fails here
        self._listener = listening_socket(settings.host, settings.port, settings.backlog, settings.defer_accept)
        self._hub = hub = engine(self._listener, self.metrics, connection_cap=cap,
                                 per_source_cap=source_cap, name_timeout=settings.name_timeout,
                                 waiter_ttl=settings.waiter_ttl, loop=loop)
        self.metrics = hub.metrics  # the C hub counts in C: its metrics read them there
        loop.set_exception_handler(self._on_loop_error)
        hub.attach()
        if settings.health_port >= 0:
            self._health = await health.start(settings.health_host, settings.health_port, self)
        self._schedule_sweep()
        event(log, "listening", host=self.address[0], port=self.address[1],
              health=":".join(map(str, self.health_address)) if self._health else "off",
              connection_cap=cap, fd_limit=fd_limit, loop=type(loop).__module__.split(".")[0], hub=hub.kind,
              name_timeout=settings.name_timeout, waiter_ttl=settings.waiter_ttl, defer_accept=settings.defer_accept,
              per_source_cap=source_cap)

    def _schedule_sweep(self) -> None:
        assert self._hub is not None
        self._hub.sweep()
        self._sweeper = asyncio.get_running_loop().call_later(self._hub.sweep_interval, self._schedule_sweep)

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An exception escaping a callback (the hub's included) is logged as one event, and the
        # loop goes on: no anonymous traceback, no dead server.
        event(log, "loop_error", logging.ERROR, message=str(context.get("message", "")),
              error=repr(context.get("exception")))

    def render_metrics(self) -> str:
        hub = self._hub
        assert hub is not None
        return self.metrics.render(waiters=hub.waiters, open_connections=hub.open, connection_cap=hub.connection_cap,
                                   per_source_cap=hub.per_source_cap, hub=hub.kind)

    @property
    def serving(self) -> bool:
        return self._listener is not None and self._listener.fileno() >= 0

    async def stop(self) -> None:
        """Stop listening, close every client without a reply, stop the sweep and the health port."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        closed = 0
        if self._hub is not None:
            self._hub.detach()
            closed = self._hub.close_all()
        if self._listener is not None:
            self._listener.close()
        if self._health is not None:
            self._health.close()
        await asyncio.sleep(0)  # let the health port's transports flush their FINs
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
