"""One private host of the NAT test (``test_nat.py``): pair again and again, and check every link.

Run inside the host's network namespace as ``python nat_peer.py --role a|b ...``. Both peers get
the same ``--names`` prefix and ``--count``; pairing ``i`` uses the name ``<names>-<i>``. On every
punched connection each side sends ``--exchange`` bytes derived from (name, its own role) and
checks that it receives exactly the bytes derived from (name, the other role). Over the last
connection both sides then send ``--bulk`` pseudo-random bytes at the same time (a sender thread)
and hash what they sent and what arrived, for the test to compare across the two peers.

Every result is one JSON line on stdout, flushed at once, so that a test that has to kill a stuck
peer still sees how far it got:

* ``{"kind": "pair", "i", "name", "ok", "ms", "local", "peer", "data_ok", "error"}`` per pairing;
* ``{"kind": "bulk", "ok", "sent", "received", "sent_sha256", "received_sha256", "seconds", "error"}``;
* ``{"kind": "done"}`` last.

Exit status 0 when every pairing, every exchange and the bulk transfer worked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

from services.rendezvous import pair
from services.rendezvous.netio import recv_exactly

CHUNK = 1 << 20


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record, separators=(",", ":")), flush=True)


def pattern(name: str, role: str, size: int) -> bytes:
    """``size`` bytes that only (name, role) produce, so a crossed or corrupted stream shows."""
    block = b"".join(hashlib.sha256(f"{name}/{role}/{n}".encode()).digest() for n in range(32))
    return (block * (size // len(block) + 1))[:size]


def exchange(sock: socket.socket, name: str, role: str, other: str, size: int) -> bool:
    """Send our pattern and receive the peer's at once (a thread sends, so no buffer size matters)."""
    failure: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(pattern(name, role, size))
        except BaseException as exc:  # reported through `failure`
            failure.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = recv_exactly(sock, size)
    sender.join()
    if failure:
        raise failure[0]
    return received == pattern(name, other, size)


def bulk(sock: socket.socket, role: str, total: int, seed: str) -> dict[str, object]:
    """Send ``total`` pseudo-random bytes while receiving the peer's; hash both directions."""
    sent_hash, received_hash = hashlib.sha256(), hashlib.sha256()
    sent = 0
    failure: list[BaseException] = []

    def send() -> None:
        nonlocal sent
        generator = random.Random(f"{seed}/{role}")
        try:
            while sent < total:
                block = generator.randbytes(min(CHUNK, total - sent))
                sock.sendall(block)
                sent_hash.update(block)
                sent += len(block)
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported through `failure`
            failure.append(exc)

    started = time.monotonic()
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        count = sock.recv_into(view)
        if not count:
            break
        received_hash.update(view[:count])
        received += count
    sender.join()
    if failure:
        raise failure[0]
    return {"sent": sent, "received": received, "sent_sha256": sent_hash.hexdigest(),
            "received_sha256": received_hash.hexdigest(), "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["a", "b"], required=True)
    parser.add_argument("--server", required=True, help="host:port of the rendezvous server")
    parser.add_argument("--names", required=True, help="prefix of the pairing names")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds for one pair() call")
    parser.add_argument("--io-timeout", type=float, default=30.0, help="seconds a send or receive may block")
    parser.add_argument("--exchange", type=int, default=4096, help="bytes each way on every link")
    parser.add_argument("--bulk", type=int, default=64 << 20, help="bytes each way on the last link")
    parser.add_argument("--cpu", type=int, default=None, help="run on this CPU only (one CPU per simulated host)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    host, port = args.server.rsplit(":", 1)
    other = "b" if args.role == "a" else "a"
    ok = True
    last: socket.socket | None = None
    for i in range(args.count):
        name = f"{args.names}-{i}"
        record: dict[str, object] = {"kind": "pair", "i": i, "name": name, "ok": False}
        started = time.monotonic()
        try:
            link = pair(name, host, int(port), timeout=args.timeout)
        except Exception as exc:
            record.update(ms=round((time.monotonic() - started) * 1000, 1), error=f"{type(exc).__name__}: {exc}")
            emit(record)
            ok = False
            break  # the peers would no longer walk the same sequence of names
        record.update(ok=True, ms=round((time.monotonic() - started) * 1000, 1),
                      local=list(link.getsockname()), peer=list(link.getpeername()))
        try:
            link.settimeout(args.io_timeout)
            record["data_ok"] = exchange(link, name, args.role, other, args.exchange)
        except Exception as exc:
            record.update(data_ok=False, error=f"{type(exc).__name__}: {exc}")
        ok = ok and bool(record["data_ok"])
        emit(record)
        if i == args.count - 1:
            last = link
        else:
            link.close()
    if last is not None:
        with last:
            if ok and args.bulk:
                try:
                    emit({"kind": "bulk", "ok": True, **bulk(last, args.role, args.bulk, args.names)})
                except Exception as exc:
                    emit({"kind": "bulk", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
                    ok = False
    emit({"kind": "done"})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
