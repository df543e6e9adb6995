"""Counters of the rendezvous server and their Prometheus text rendering.

Plain integer attributes, bumped on the hot path without locks (the server is one event loop),
rendered only when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

#: Why a connection was closed without being paired; every label is documented here.
REJECTION_REASONS = {
    "server_full": "the overall connection cap (derived from the fd limit) was reached",
    "source_limit": "the per-source-address connection cap (a share of the budget, with a floor) was reached",
    "accept_failed": "accept() itself failed, typically out of file descriptors (counts attempts)",
    "empty_name": "the first read held no bytes before a NUL",
    "name_too_long": "the name (the first read up to its first NUL) was over 100 bytes",
    "unexpected_data": "the client sent bytes after its name",
    "no_ipv4_address": "the client's address is native IPv6, which the 8-byte reply cannot carry",
    "shutdown": "the server was stopping",
}
TIMEOUT_KINDS = {
    "name": "the connection sent no name within the name timeout",
    "waiter_ttl": "the waiter was not joined within the waiter TTL",
}


class Counts(NamedTuple):
    """The counters at one instant: what one scrape renders."""

    connections_total: int
    pairings_total: int
    waiters_gone_total: int
    rejected: Counter[str]
    timeouts: Counter[str]


class Metrics:
    """What happened since the server started."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.pairings_total = 0
        self.waiters_gone_total = 0
        self.rejected: Counter[str] = Counter()
        self.timeouts: Counter[str] = Counter()

    def counts(self) -> Counts:
        """The counters now, read once (a hub whose counters live elsewhere reads them here)."""
        return Counts(self.connections_total, self.pairings_total, self.waiters_gone_total, Counter(self.rejected),
                      Counter(self.timeouts))

    def render(self, *, waiters: int, open_connections: int, connection_cap: int, per_source_cap: int,
               hub: str = "python") -> str:
        """The Prometheus text exposition (format 0.0.4) of the counters and current gauges."""
        lines: list[str] = []
        counts = self.counts()

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, int]]) -> None:
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        metric("rendezvous_connections_total", "counter", "Pairing connections accepted.",
               [("", counts.connections_total)])
        metric("rendezvous_pairings_total", "counter", "Pairs of clients introduced to each other.",
               [("", counts.pairings_total)])
        metric("rendezvous_waiters_gone_total", "counter", "Waiters that disconnected before a partner came.",
               [("", counts.waiters_gone_total)])
        metric("rendezvous_rejections_total", "counter", "Connections closed without a reply, by reason.",
               [(f'{{reason="{reason}"}}', counts.rejected[reason]) for reason in REJECTION_REASONS])
        metric("rendezvous_timeouts_total", "counter", "Connections dropped by a timeout, by kind.",
               [(f'{{kind="{kind}"}}', counts.timeouts[kind]) for kind in TIMEOUT_KINDS])
        metric("rendezvous_waiters", "gauge", "Named clients waiting for a partner.", [("", waiters)])
        metric("rendezvous_open_connections", "gauge", "Open pairing connections.", [("", open_connections)])
        metric("rendezvous_connection_cap", "gauge", "Open pairing connections allowed.", [("", connection_cap)])
        metric("rendezvous_per_source_cap", "gauge", "Open pairing connections allowed from one source address.",
               [("", per_source_cap)])
        metric("rendezvous_hub_info", "gauge", "The pairing engine serving (c or python); always 1.",
               [(f'{{hub="{hub}"}}', 1)])
        return "\n".join(lines) + "\n"
