"""The baseline of the server benchmark: TCPunch's protocol written the obvious way on asyncio streams.

What a careful first version would look like: ``asyncio.start_server``, ``await reader.read(100)``,
a dict of waiting writers, two writes and a close. It is correct for well-behaved clients, and
it has none of the hardening of ``services/rendezvous/server.py`` (no name timeout, no cleanup
of dead waiters, no connection caps, default backlog), on purpose: the benchmark asks what the
hardening and the Protocol-based design cost or gain against this, in the same run.

Run: ``python bench/streams_baseline.py --host 127.0.0.1 --port 10000 [--uvloop]``. It prints
``listening HOST PORT`` on stdout once it accepts (``--port 0`` picks a free port), and stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct

NAME_MAX = 100
_MESSAGE = struct.Struct("!4sH2x")


def address_message(writer: asyncio.StreamWriter) -> bytes:
    """The 8-byte message carrying the client's address as this server sees it."""
    ip, port = writer.get_extra_info("peername")[:2]
    return _MESSAGE.pack(socket.inet_aton(ip), port)


class Baseline:
    """Pairs clients by name, in twos, exactly as the reference server does."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, tuple[asyncio.StreamWriter, bytes]] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client: read the name, answer with its address, pair it or let it wait."""
        data = await reader.read(NAME_MAX)
        name = data.split(b"\0", 1)[0]
        mine = address_message(writer)
        writer.write(mine)
        waiter = self.waiting.pop(name, None)
        if waiter is None:
            self.waiting[name] = (writer, mine)
            return
        other, theirs = waiter
        other.write(mine)
        writer.write(theirs)
        other.close()
        writer.close()


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    baseline = Baseline()
    server = await asyncio.start_server(baseline.handle, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]} {bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()  # waiters stay open until the process exits: no hardening, on purpose


def main() -> None:
    parser = argparse.ArgumentParser(description="Plain asyncio-streams TCPunch server (benchmark baseline).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's own loop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
