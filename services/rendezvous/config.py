"""Every setting of the rendezvous server and client, with its default and its reason.

The server reads ``COSMIC_RENDEZVOUS_<FIELD>`` (e.g. ``COSMIC_RENDEZVOUS_PORT``), the client
``COSMIC_PAIR_<FIELD>``; command-line options override both (see :mod:`services.envconfig`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services import envconfig
from services.rendezvous.protocol import DEFAULT_PORT

SERVER_ENV_PREFIX = "COSMIC_RENDEZVOUS_"
#: The hubs ``hub`` may name: the C one when it is built else Python; only C; only Python.
HUB_CHOICES = ("auto", "c", "python")
CLIENT_ENV_PREFIX = "COSMIC_PAIR_"


def _check_port(name: str, port: int, allow_disabled: bool = False) -> None:
    low = -1 if allow_disabled else 0
    if not low <= port <= 65535:
        raise envconfig.SettingsError(f"{name} must be within {low}..65535, got {port}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise envconfig.SettingsError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class ServerSettings:
    """How the rendezvous server listens and protects itself."""

    #: Address of the pairing listener; ``0.0.0.0`` is every IPv4 interface, ``::`` is dual stack.
    host: str = "0.0.0.0"
    #: Pairing port; 10000 is what TCPunch clients and FMI's ``fmi.json`` expect. 0 picks a free one.
    port: int = DEFAULT_PORT
    #: HTTP side port for ``/healthz`` and ``/metrics``, so probes never touch the pairing port.
    #: 0 picks a free port; -1 disables it.
    health_port: int = 10001
    #: Address of the health listener.
    health_host: str = "0.0.0.0"
    #: Seconds an accepted connection may take to send its name before it is dropped. Real
    #: clients send it in their first packet; a silent one costs a file descriptor until then
    #: (and is accepted only after ``defer_accept``).
    name_timeout: float = 5.0
    #: Seconds a named client may wait for its partner; 900 is the Lambda maximum run time,
    #: after which no partner can still be coming.
    waiter_ttl: float = 900.0
    #: Open pairing connections at most, overall. Lowered at start to what the file-descriptor
    #: limit allows, so that running out of descriptors is a refusal, not a crash.
    max_connections: int = 50_000
    #: Open pairing connections at most from one source address, whatever the budget: an upper
    #: bound on the share below. High, because a whole job's ranks may share one NAT address.
    max_per_source: int = 10_000
    #: Fraction of the connection budget (the cap above, after the fd limit) that one source
    #: address may hold, so that one host can never refuse service to all: with the share at
    #: 0.5, the others always keep half the budget.
    per_source_share: float = 0.5
    #: ... but never fewer than this many per source, so that a job behind one NAT (or the
    #: embedded stack, where every rank is 127.0.0.1) pairs even on a small budget. The
    #: per-source cap is min(max_per_source, max(per_source_floor, share x budget)).
    per_source_floor: int = 256
    #: Listen backlog; bursts of a whole job's ranks arrive within milliseconds.
    backlog: int = 4096
    #: Seconds the kernel holds a new connection until its first bytes come (Linux's
    #: TCP_DEFER_ACCEPT), so that the server wakes once per client, its name there, instead of
    #: once for the connection and again for the name. A client silent that long is then
    #: accepted and dropped after ``name_timeout``; until then it costs no descriptor. 0: off.
    defer_accept: int = 1
    #: Event loop: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``.
    loop: str = "auto"
    #: Pairing engine: ``auto`` (the C hub when it was built at install, else the Python one),
    #: ``c`` (refuse to start without it) or ``python``. Both behave the same; C is faster.
    hub: str = "auto"

    def __post_init__(self) -> None:
        _check_port("port", self.port)
        _check_port("health_port", self.health_port, allow_disabled=True)
        _check_positive("name_timeout", self.name_timeout)
        _check_positive("waiter_ttl", self.waiter_ttl)
        for name in ("max_connections", "max_per_source", "per_source_floor", "backlog"):
            _check_positive(name, getattr(self, name))
        if self.defer_accept < 0:
            raise envconfig.SettingsError(f"defer_accept must be 0 (off) or more seconds, got {self.defer_accept}")
        if not 0 < self.per_source_share <= 1:
            raise envconfig.SettingsError(f"per_source_share must be within (0, 1], got {self.per_source_share}")
        if self.loop not in ("auto", "uvloop", "asyncio"):
            raise envconfig.SettingsError(f"loop must be auto, uvloop or asyncio, got {self.loop!r}")
        if self.hub not in HUB_CHOICES:
            raise envconfig.SettingsError(f"hub must be one of {', '.join(HUB_CHOICES)}, got {self.hub!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ServerSettings:
        return envconfig.load(cls, SERVER_ENV_PREFIX, environ, **overrides)


@dataclass(frozen=True)
class ClientSettings:
    """Defaults of :func:`services.rendezvous.pair`."""

    #: Overall deadline of one pairing, from the call to a connected socket. Generous because
    #: two Lambda invocations of one job may start tens of seconds apart.
    timeout: float = 60.0
    #: First pause after a refused punch attempt; grows to ``retry_max``. Short, because a NAT
    #: that answers unsolicited SYNs with a reset opens only while a SYN of ours is in flight.
    retry_initial: float = 0.0005
    #: Longest pause between punch attempts.
    retry_max: float = 0.01
    #: How long one connect attempt may stay unanswered before a fresh SYN is sent; a NAT that
    #: drops SYNs silently would otherwise leave us waiting for the kernel's 1 s retransmit.
    attempt_max: float = 0.25

    def __post_init__(self) -> None:
        for name in ("timeout", "retry_initial", "retry_max", "attempt_max"):
            _check_positive(name, getattr(self, name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ClientSettings:
        return envconfig.load(cls, CLIENT_ENV_PREFIX, environ, **overrides)
