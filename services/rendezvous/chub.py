"""The C hub (``_hub.c``, an optional build) behind :class:`.hub.Hub`'s contract, and the choice
between the two hubs (``COSMIC_RENDEZVOUS_HUB``: ``auto``, ``c`` or ``python``).

Why a C hub: the pure-Python hub tops out below the C baseline of tcpunchd's design (README,
Benchmarks): the interpreter's share of each pairing, and a second epoll wait per wake-up (the
event loop's, then the hub's). ``_hub.c`` is the same hub, rule for rule, and the tests of
``tests/rendezvous`` run against both.

How it is driven: **its own epoll loop on a thread of its own, without the GIL** (``DRIVE``).
The C loop never touches a Python object, so it holds no GIL at all and the event loop's thread
(health port, signals, the sweep) never competes with it; one wake-up is one ``epoll_wait``.
The other way, the event loop's reader calling ``poll()`` (as the Python hub is driven), keeps
the two epoll waits per wake-up and the loop's callback. Measured side by side in one run (README,
Benchmarks), the thread took less CPU per pairing at 1 load thread and at light load (1.11x and
1.04x of the C baseline's, against 1.16x and 1.13x), the same at 4 (0.97x); pairings/s were within
each other's spread. (A thread for the *Python* hub was tried and reverted: its loop needed the
GIL, which it then fought the event loop for.)

What stays in Python, off the hot path: the settings, the sweep's schedule, and the log lines of
rare events, which the C side queues as notes, signalling an eventfd the event loop watches when
the first arrives; :meth:`CHub._log_notes` hands them to the same rate-limited loggers the Python
hub uses. The counters live in C; :class:`CMetrics` reads them
when ``/metrics`` is rendered, so the exposition is the Python hub's, line for line. One line is
the Python hub's alone: the per-pairing ``paired`` DEBUG event, which would put Python back on
the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections import Counter
from typing import Any

from services.logs import event
from services.rendezvous.config import HUB_CHOICES
from services.rendezvous.errors import HubUnavailable
from services.rendezvous.hub import ACCEPT_PAUSE, Hub, log, rare_events, sweep_granularity
from services.rendezvous.metrics import Counts, Metrics
from services.rendezvous.protocol import describe_name

try:
    from services.rendezvous import _hub  # type: ignore[attr-defined]
except ImportError as missing:  # not built (no compiler at install time, or not Linux)
    _hub = None
    MISSING: str | None = str(missing)
else:
    MISSING = None

#: How the C hub is driven: ``thread`` (its own epoll loop, no GIL) or ``reader`` (the event loop's).
DRIVE = "thread"
#: How long stopping waits for the hub's thread, which wakes at once (an eventfd) when told to stop.
STOP_TIMEOUT = 10.0
#: Which context field a rejection's note value fills, by reason (the Python hub logs the same).
_REJECTION_CONTEXT = {"server_full": "cap", "source_limit": "cap", "empty_name": "length", "name_too_long": "length"}


def c_available() -> bool:
    """Whether the C hub was built and imports."""
    return _hub is not None


def hub_class(choice: str) -> type[Hub] | type[CHub]:
    """The hub ``COSMIC_RENDEZVOUS_HUB`` asks for; raises HubUnavailable for ``c`` when it is not built."""
    if choice not in HUB_CHOICES:
        raise ValueError(f"hub must be one of {', '.join(HUB_CHOICES)}, got {choice!r}")
    if choice == "python" or (choice == "auto" and _hub is None):
        return Hub
    if _hub is None:
        raise HubUnavailable(f"the C hub was asked for (hub=c) but is not built: {MISSING}; "
                             "reinstall with a C compiler (pip install -e .), or use hub=auto or python")
    return CHub


class CMetrics(Metrics):
    """The C hub's counters as :class:`Metrics`: read from C when asked, so never stale."""

    def __init__(self, core: Any) -> None:  # no super().__init__(): every counter lives in C
        self._core = core

    def counts(self) -> Counts:
        """Every counter from one read of C's: a scrape renders one instant."""
        counters = self._core.counters()
        return Counts(int(counters["connections_total"]), int(counters["pairings_total"]),
                      int(counters["waiters_gone_total"]), Counter(counters["rejected"]), Counter(counters["timeouts"]))

    @property  # type: ignore[override]
    def connections_total(self) -> int:
        return self.counts().connections_total

    @property  # type: ignore[override]
    def pairings_total(self) -> int:
        return self.counts().pairings_total

    @property  # type: ignore[override]
    def waiters_gone_total(self) -> int:
        return self.counts().waiters_gone_total

    @property  # type: ignore[override]
    def rejected(self) -> Counter[str]:
        return self.counts().rejected

    @property  # type: ignore[override]
    def timeouts(self) -> Counter[str]:
        return self.counts().timeouts


class CHub:
    """:class:`.hub.Hub`'s contract over ``_hub.Hub``; the server cannot tell them apart.

    ``metrics`` is not written to: the counters live in C, and :attr:`metrics` (a
    :class:`CMetrics`) is what the server renders.
    """

    kind = "c"

    def __init__(self, listener: socket.socket, metrics: Metrics, *, connection_cap: int, per_source_cap: int,
                 name_timeout: float, waiter_ttl: float, loop: asyncio.AbstractEventLoop,
                 drive: str | None = None) -> None:
        drive = drive or DRIVE  # read now, so that bench/_reader_drive.py can measure the other way
        if _hub is None:
            raise HubUnavailable(f"the C hub is not built: {MISSING}")
        if drive not in ("thread", "reader"):
            raise ValueError(f"drive must be thread or reader, got {drive!r}")
        self.listener = listener
        self.connection_cap = connection_cap
        self.per_source_cap = per_source_cap
        self.loop = loop
        self.drive = drive
        # the key seeds the C tables' keyed hash: clients choose names, so they must not choose collisions
        self._core = _hub.Hub(listener.fileno(), listener.family, connection_cap, per_source_cap,
                              name_timeout, waiter_ttl, os.urandom(16))
        self.metrics: Metrics = CMetrics(self._core)
        self.sweep_interval = min(sweep_granularity(name_timeout), sweep_granularity(waiter_ttl))
        self._log_rejection, self._log_timeout, self._log_accept_failure = rare_events()
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        """The C hub's epoll set (watched by the event loop only when ``drive`` is ``reader``)."""
        return int(self._core.fileno())

    def attach(self) -> None:
        """Start serving: the hub's own thread, or the event loop's reader; and logging its notes."""
        self.loop.add_reader(self._core.notes_fileno(), self._log_notes)
        if self.drive == "reader":
            self.loop.add_reader(self.fileno(), self._core.poll)
            return
        self._thread = threading.Thread(target=self._serve, name="rendezvous-hub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._core.run()
        except OSError as error:  # epoll itself failed: nothing more can be served, say so loudly
            event(log, "hub_failed", logging.ERROR, error=repr(error))

    def detach(self) -> None:
        """Stop serving (the connections stay open until :meth:`close_all`)."""
        self.loop.remove_reader(self._core.notes_fileno())
        if self.drive == "reader":
            self.loop.remove_reader(self.fileno())
        self._stop_thread()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._core.stop()
            self._thread.join(STOP_TIMEOUT)
            self._thread = None

    @property
    def open(self) -> int:
        """Open pairing connections."""
        return int(self._core.counters()["open"])

    @property
    def waiters(self) -> int:
        """Named clients waiting for a partner."""
        return int(self._core.counters()["waiters"])

    def sweep(self) -> None:
        """Close every connection whose name or partner is overdue (their notes are logged next)."""
        self._core.sweep()

    def close_all(self) -> int:
        """Close every client without a reply (shutdown) and the epoll set; returns how many were open."""
        self._stop_thread()  # the thread must not serve what is being closed
        closed = int(self._core.close_all())
        self._log_notes()
        return closed

    def _log_notes(self) -> None:
        """Hand the C side's notes to the rate-limited loggers, as the Python hub logs them."""
        notes, dropped = self._core.take_notes()
        for kind, label, source, value, name in notes:
            if kind == "rejected":
                context = {_REJECTION_CONTEXT[label]: value} if label in _REJECTION_CONTEXT else {}
                self._log_rejection(reason=label, source=source, **context)
            elif kind == "timeout":
                self._log_timeout(kind=label, source=source, name=describe_name(name))
            else:
                self._log_accept_failure(error=repr(OSError(value, os.strerror(value))), pause_s=ACCEPT_PAUSE)
        self._log_rejection.held_back(dropped["rejected"])
        self._log_timeout.held_back(dropped["timeout"])
        self._log_accept_failure.held_back(dropped["accept_failed"])
