"""The communicator: FMI-style point-to-point messages and collectives between the ranks of a job.

Each pair of ranks shares one TCP link, punched through NATs by :func:`pair` the first time the
two ranks talk (or all at once with :meth:`Communicator.connect_all`). The link's pairing name
is derived from ``comm_name`` and the two ranks: both ends compute the same name whatever the
direction of the first message, names of different communicators or rank pairs cannot collide,
and the name fits the protocol's 100 bytes.

``comm_name`` is the job's secret. Anyone who knows it can take a rank's place at the rendezvous
server, and values other than arrays travel pickled, which trusts the peer. Mint 128 random bits
per job (``secrets.token_hex(16)``), as the coordinator does, and never reuse one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from services.logs import event
from services.rendezvous import collectives
from services.rendezvous.client import pair_async
from services.rendezvous.errors import CollectiveTimeout, CommError, PeerGone, RankFailed, RendezvousError
from services.rendezvous.frames import Op
from services.rendezvous.protocol import DEFAULT_PORT
from services.rendezvous.reduction import Reducer
from services.rendezvous.transfer import Interrupt, abort_frame, exchange

log = logging.getLogger("cosmic.rendezvous.comm")
T = TypeVar("T")

#: Default deadline of one operation, seconds; Lambda invocations of one job may start tens of
#: seconds apart, and the first operation also waits for them.
DEFAULT_TIMEOUT = 60.0
#: Keepalive: NATs forget idle flows (AWS's after 350 s), so idle links send probes long before.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 60, 15, 4
MAX_RANKS = 1_000_000


def link_name(comm_name: str, a: int, b: int) -> str:
    """Pairing name of the link between ranks ``a`` and ``b``: the same from both ends.

    ``cr1.<low>.<high>.<digest>`` where the digest hashes the length-prefixed communicator name
    and the two ranks: unambiguous (unlike FMI's ``<comm_name><a>_<b>``), at most 62 bytes, and
    unguessable without the communicator name.
    """
    low, high = sorted((a, b))
    raw = comm_name.encode("utf-8")
    digest = hashlib.sha256(struct.pack("!I", len(raw)) + raw + struct.pack("!II", low, high)).hexdigest()
    return f"cr1.{low}.{high}.{digest[:40]}"


def fmi_settings(config: str | Path | dict[str, Any]) -> tuple[str, int, float]:
    """``(host, port, timeout in s)`` from an FMI ``fmi.json`` (its ``Direct`` backend)."""
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    try:
        direct = config["backends"]["Direct"]
        host, port = str(direct["host"]), int(direct.get("port", DEFAULT_PORT))
        timeout = float(direct.get("max_timeout", DEFAULT_TIMEOUT * 1000)) / 1000
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"fmi config needs backends.Direct.host (and port, max_timeout in ms): {exc}") from None
    if direct.get("enabled") is False:
        raise ValueError("fmi config: the Direct backend is disabled")
    return host, port, timeout


class Communicator:
    """The ranks ``0..world_size-1`` of one job, linked pairwise through a rendezvous server.

    Use as a context manager, or call :meth:`close`. Every operation finishes within ``timeout``
    seconds or raises a :class:`CommError` naming the rank it waited for. After any error the
    communicator tells its linked peers (so that they fail fast, naming the rank that failed),
    closes its links, and refuses further operations.
    """

    def __init__(self, rank: int, world_size: int, comm_name: str, host: str | None = None,
                 port: int = DEFAULT_PORT, timeout: float | None = None, *,
                 fmi_config: str | Path | dict[str, Any] | None = None) -> None:
        if fmi_config is not None:
            host, port, fmi_timeout = fmi_settings(fmi_config)
            timeout = fmi_timeout if timeout is None else timeout
        if host is None:
            raise ValueError("the rendezvous host is required (host=... or fmi_config=...)")
        if not 1 <= world_size <= MAX_RANKS:
            raise ValueError(f"world_size must be within 1..{MAX_RANKS}, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be within 0..{world_size - 1}, got {rank}")
        if not comm_name:
            raise ValueError("comm_name must be a non-empty (and secret) string")
        self.rank, self.world_size, self.comm_name = rank, world_size, comm_name
        self.host, self.port = host, port
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        self._links: dict[int, socket.socket] = {}
        self._seq = 0
        self._failure: CommError | None = None
        self._closed = False
        self._interrupt = Interrupt()

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every link this communicator opened; idempotent."""
        self._closed = True
        while self._links:
            self._links.popitem()[1].close()
        self._interrupt.close()

    def interrupt(self, reason: str, failed_rank: int) -> None:
        """End the operation under way, from any thread: it raises RankFailed naming
        ``failed_rank`` (its peers hear of it through the abort frame), and so does every later one.

        For a caller who learns from elsewhere that a peer is gone (the coordinator saw it fail,
        or the job was cancelled): waiting out the deadline for it would only hold the job.
        """
        self._interrupt.set(reason, failed_rank)

    def connect_all(self) -> None:
        """Open the links to every other rank now (otherwise each opens on first use)."""
        self._run(Op.P2P, lambda deadline: self._ensure_links(range(self.world_size), deadline), count=False)

    # -- point to point ------------------------------------------------------------------
    def send(self, obj: Any, dst: int) -> None:
        """Send ``obj`` to rank ``dst``; returns once it is handed to the link."""
        self._check_peer(dst)
        self._run(Op.P2P, lambda deadline: self._exchange(Op.P2P, {dst: obj}, [], deadline), count=False)

    def recv(self, src: int) -> Any:
        """The next object rank ``src`` sends with :meth:`send`."""
        self._check_peer(src)
        return self._run(Op.P2P, lambda deadline: self._exchange(Op.P2P, {}, [src], deadline)[src], count=False)

    # -- collectives (algorithms in :mod:`services.rendezvous.collectives`) --------------
    def barrier(self) -> None:
        self._run(Op.BARRIER, lambda deadline: collectives.barrier(self, deadline))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        self._check_rank(root)
        return self._run(Op.BCAST, lambda deadline: collectives.bcast(self, obj, root, deadline))

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """At ``root``, every rank's ``obj`` in rank order; None elsewhere."""
        self._check_rank(root)
        return self._run(Op.GATHER, lambda deadline: collectives.gather(self, obj, root, deadline))

    def allgather(self, obj: Any) -> list[Any]:
        return self._run(Op.ALLGATHER, lambda deadline: collectives.allgather(self, obj, deadline))

    def scatter(self, objs: list[Any] | None, root: int = 0) -> Any:
        """Rank ``i`` gets ``objs[i]``; only ``root`` passes ``objs`` (``world_size`` of them)."""
        self._check_rank(root)
        if self.rank == root and (objs is None or len(objs) != self.world_size):
            raise ValueError(f"scatter at the root needs {self.world_size} objects")
        return self._run(Op.SCATTER, lambda deadline: collectives.scatter(self, objs, root, deadline))

    def reduce(self, x: Any, root: int = 0, op: str | Reducer = "sum") -> Any:
        """At ``root``, ``op`` over every rank's ``x``; None elsewhere."""
        self._check_rank(root)
        return self._run(Op.REDUCE, lambda deadline: collectives.reduce(self, x, root, op, deadline))

    def allreduce(self, x: Any, op: str | Reducer = "sum") -> Any:
        return self._run(Op.ALLREDUCE, lambda deadline: collectives.allreduce(self, x, op, deadline))

    def scan(self, x: Any, op: str | Reducer = "sum") -> Any:
        """Inclusive prefix: rank ``i`` gets ``op`` over ranks ``0..i``."""
        return self._run(Op.SCAN, lambda deadline: collectives.scan(self, x, op, deadline))

    # -- machinery used by the algorithms -------------------------------------------------
    @property
    def seq(self) -> int:
        """Number of collectives started; frames carry it so that mismatches are caught."""
        return self._seq

    def _exchange(self, op: Op, sends: dict[int, Any], receives: list[int], deadline: float,
                  into: dict[int, Any] | None = None) -> dict[int, Any]:
        self._ensure_links([*sends, *receives], deadline)
        return exchange(self._links, self.rank, op, self._seq, sends, receives, deadline, into, self._interrupt)

    def _ensure_links(self, peers: Iterable[int], deadline: float) -> None:
        missing = sorted({p for p in peers if p != self.rank and p not in self._links})
        if not missing:
            return
        started = time.monotonic()
        remaining = max(deadline - started, 0.001)
        names = [link_name(self.comm_name, self.rank, peer) for peer in missing]
        results = asyncio.run(_pair_all(names, self.host, self.port, remaining, self._interrupt))
        if self._interrupt.is_set:
            for result in results:
                if isinstance(result, socket.socket):
                    result.close()
            raise self._interrupt.error(self.rank)
        failed = []
        for peer, result in zip(missing, results, strict=True):
            if isinstance(result, socket.socket):
                _tune(result)
                self._links[peer] = result
            else:
                failed.append((peer, result))
        event(log, "links_opened", logging.DEBUG, rank=self.rank, peers=missing,
              ms=round((time.monotonic() - started) * 1e3, 2))
        if failed:
            peer, error = failed[0]
            waiting = [p for p, _ in failed]
            if isinstance(error, TimeoutError):
                raise CollectiveTimeout(f"ranks {waiting} did not come to link with this rank at the rendezvous "
                                        f"server {self.host}:{self.port} in time (never started, died, or stuck "
                                        "waiting on another rank)", rank=self.rank, peers=waiting)
            if isinstance(error, PeerGone):  # the server stopped waiting for that rank
                raise RankFailed(f"rank {peer} never came to link: {error}", rank=self.rank, failed_rank=peer)
            raise CommError(f"cannot use the rendezvous server {self.host}:{self.port}: {error}", rank=self.rank)

    def _run(self, op: Op, body: Callable[[float], T], count: bool = True) -> T:
        if self._closed:
            raise CommError("communicator is closed", rank=self.rank)
        if self._failure is not None:
            raise CommError(f"communicator is unusable after an earlier failure: {self._failure}", rank=self.rank)
        deadline = time.monotonic() + self.timeout
        try:
            if self._interrupt.is_set:
                raise self._interrupt.error(self.rank)
            return body(deadline)
        except (CommError, RendezvousError, OSError) as error:
            failure = error if isinstance(error, CommError) else CommError(str(error), rank=self.rank)
            self._abort(op, failure)
            raise failure from (None if failure is error else error)
        finally:
            if count:
                self._seq += 1

    def _abort(self, op: Op, failure: CommError) -> None:
        """Tell every linked peer that this job failed (best effort), then close the links."""
        self._failure = failure
        failed_rank = failure.failed_rank if isinstance(failure, RankFailed) else self.rank
        if isinstance(failure, CollectiveTimeout) and failure.peers:
            failed_rank = failure.peers[0]
        frame = abort_frame(op, self._seq, failed_rank, str(failure))
        for sock in self._links.values():
            try:
                sock.send(frame)
            except OSError:
                pass  # that peer is gone too; it learns from the closed link
        event(log, "communicator_failed", logging.WARNING, rank=self.rank, op=op.name.lower(), seq=self._seq,
              failed_rank=failed_rank, error=str(failure))
        self.close()

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")

    def _check_peer(self, peer: int) -> None:
        self._check_rank(peer)
        if peer == self.rank:
            raise ValueError("a rank cannot send to or receive from itself")


async def _pair_all(names: list[str], host: str, port: int, timeout: float, wake: Interrupt) -> list[Any]:
    """Pair every link at once; an interrupt cancels the pairings still waiting (their results are errors)."""
    pairing = asyncio.ensure_future(asyncio.gather(*(pair_async(name, host, port, timeout) for name in names),
                                                   return_exceptions=True))
    woken = asyncio.ensure_future(asyncio.get_running_loop().sock_recv(wake.reader, 1))
    await asyncio.wait([pairing, woken], return_when=asyncio.FIRST_COMPLETED)
    woken.cancel()
    if not pairing.done():
        pairing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pairing
        return []  # the caller sees the interrupt and raises it
    return pairing.result()


def _tune(sock: socket.socket) -> None:
    """Links stay non-blocking (the transfer loop multiplexes them) with NODELAY and keepalive."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
