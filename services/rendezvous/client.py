"""``pair()``: meet a peer through a rendezvous server and return a TCP socket connected to it.

How (TCPunch's simultaneous open, with the fixes PROTOCOL.md asks for):

1. bind the rendezvous socket to a free port P, and a listener to the same P (both with
   SO_REUSEADDR|SO_REUSEPORT), *then* connect to the server. The reference order (connect
   first, bind the listener after) fails with EADDRINUSE on a host full of TIME_WAIT sockets.
   Listening before registering also means the peer finds our listener already up.
2. send the name, read message 1 (our address as the server sees it) and message 2 (the peer's).
3. connect from P to the peer's address, retrying fast with a short backoff, while watching
   the listener; the first of an accepted connection *from that peer* or our own completed
   connect is the link. Only one TCP connection can exist between the two address pairs, so
   both ends always hold the same one.

Everything runs against one overall deadline and every socket but the returned one is closed
on every path. :func:`pair_async` is the asyncio form; :func:`pair` wraps it for threads (each
call runs its own short-lived event loop, so it is safe from many threads at once).
"""

from __future__ import annotations

import asyncio
import errno
import socket

from services.rendezvous.config import ClientSettings
from services.rendezvous.errors import InvalidName, PeerGone, ProtocolError, RendezvousError, RendezvousTimeout
from services.rendezvous.protocol import (
    DEFAULT_PORT,
    MESSAGE_SIZE,
    NameRejected,
    decode_address,
    encode_name,
    wire_ipv4,
)

Address = tuple[str, int]


def _reusable_socket(port: int) -> socket.socket:
    """A non-blocking IPv4 socket bound to ``port`` (0: a free one), shareable with our listener."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if port == 0:
            # Take a port nobody holds before allowing port sharing, so that two concurrent
            # pairings never share a listening port.
            sock.bind(("0.0.0.0", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("0.0.0.0", port))
    except OSError:
        sock.close()
        raise
    return sock


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> Address:
    try:
        socket.inet_aton(host)
        if host.count(".") == 3:
            return host, port
    except OSError:
        pass
    infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    return infos[0][4][0], infos[0][4][1]


async def _read_message(loop: asyncio.AbstractEventLoop, sock: socket.socket, what: str,
                        context: dict[str, object]) -> Address:
    data = b""
    while len(data) < MESSAGE_SIZE:
        chunk = await loop.sock_recv(sock, MESSAGE_SIZE - len(data))
        if not chunk:
            if data:
                raise ProtocolError(f"server closed the connection {len(data)} bytes into {what}", **context)
            raise PeerGone(f"server closed the connection before sending {what} (rejected, timed out "
                           "or shutting down)", **context)
        data += chunk
    ip, port = decode_address(data)
    if port == 0 or ip == "0.0.0.0":
        raise ProtocolError(f"server sent an unusable address {ip}:{port} as {what}", **context)
    return ip, port


async def _ready(loop: asyncio.AbstractEventLoop, listener: socket.socket, attempt: socket.socket | None,
                 timeout: float) -> str | None:
    """Wait until the listener is readable ("listener"), the attempt writable ("attempt"), or timeout (None)."""
    ready: asyncio.Future[str | None] = loop.create_future()

    def mark(which: str | None) -> None:
        if not ready.done():
            ready.set_result(which)

    loop.add_reader(listener.fileno(), mark, "listener")
    if attempt is not None:
        loop.add_writer(attempt.fileno(), mark, "attempt")
    timer = loop.call_later(timeout, mark, None)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(listener.fileno())
        if attempt is not None:
            loop.remove_writer(attempt.fileno())


def _accept_from(listener: socket.socket, peer: Address) -> socket.socket | None:
    """Accept pending connections; keep the one from ``peer`` and close strangers."""
    while True:
        try:
            conn, source = listener.accept()
        except BlockingIOError:
            return None
        if (wire_ipv4(source[0]), source[1]) == peer:
            return conn
        conn.close()  # not who the server introduced: a stranger guessed our port


async def _punch(loop: asyncio.AbstractEventLoop, listener: socket.socket, local_port: int, peer: Address,
                 settings: ClientSettings) -> socket.socket:
    """Simultaneous open from ``local_port`` to ``peer``; returns the connected socket."""
    delay = settings.retry_initial
    attempt: socket.socket | None = None
    attempt_ends = next_attempt = loop.time()
    try:
        while True:
            now = loop.time()
            if attempt is None and now >= next_attempt:
                attempt = _reusable_socket(local_port)
                status = attempt.connect_ex(peer)
                if status == 0:
                    winner, attempt = attempt, None
                    return winner
                if status != errno.EINPROGRESS:
                    # EADDRNOTAVAIL: the peer's connection to us already holds this address
                    # pair and waits in our listener. Anything else: try again shortly.
                    attempt.close()
                    attempt, next_attempt = None, now + delay
                else:
                    attempt_ends = now + settings.attempt_max
            wait = (attempt_ends if attempt is not None else next_attempt) - loop.time()
            which = await _ready(loop, listener, attempt, max(wait, 0.0))
            if which == "listener":
                conn = _accept_from(listener, peer)
                if conn is not None:
                    return conn
            elif attempt is not None:
                error = attempt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if which == "attempt" and error == 0:
                    winner, attempt = attempt, None
                    return winner
                if which == "attempt" or loop.time() >= attempt_ends:
                    # refused (the peer's NAT or host answered with a reset), or unanswered
                    # (a NAT dropped the SYN): a fresh SYN soon
                    attempt.close()
                    attempt = None
                    next_attempt = loop.time() + (delay if which == "attempt" else 0.0)
                    delay = min(delay * 2, settings.retry_max)
    finally:
        if attempt is not None:
            attempt.close()


async def pair_async(name: str | bytes, host: str, port: int = DEFAULT_PORT, timeout: float | None = None,
                     *, settings: ClientSettings | None = None) -> socket.socket:
    """Pair with the peer that uses ``name`` at the server ``host:port``.

    Returns a non-blocking TCP socket connected to the peer (hand it to
    ``asyncio.open_connection(sock=...)`` or use ``loop.sock_*``). Raises
    :class:`RendezvousTimeout` when ``timeout`` seconds (default from :class:`ClientSettings`)
    pass first, :class:`PeerGone` when the server drops us, :class:`InvalidName` for a name the
    protocol cannot carry, and :class:`RendezvousError` for any other failure.
    """
    settings = settings or ClientSettings.from_env()
    timeout = settings.timeout if timeout is None else timeout
    server_label = f"{host}:{port}"
    try:
        wire_name = encode_name(name)
    except NameRejected as exc:
        raise InvalidName(str(exc), server=server_label) from None
    context: dict[str, object] = {"name": wire_name, "server": server_label}
    loop = asyncio.get_running_loop()
    phase = "connect"
    opened: list[socket.socket] = []
    try:
        async with asyncio.timeout(timeout):
            server = await _resolve(loop, host, port)
            rendezvous = _reusable_socket(0)
            opened.append(rendezvous)
            local_port = rendezvous.getsockname()[1]
            listener = _reusable_socket(local_port)
            opened.append(listener)
            listener.listen(8)
            await loop.sock_connect(rendezvous, server)
            phase = "register"
            await loop.sock_sendall(rendezvous, wire_name)
            await _read_message(loop, rendezvous, "our own address (message 1)", context)
            phase = "wait_peer"
            peer = await _read_message(loop, rendezvous, "the peer's address (message 2)", context)
            rendezvous.close()
            phase = "punch"
            return await _punch(loop, listener, local_port, peer, settings)
    except TimeoutError:
        raise RendezvousTimeout(f"pairing timed out after {timeout:g} s while in phase {phase}",
                                phase=phase, **context) from None
    except socket.gaierror as exc:
        raise RendezvousError(f"cannot resolve the rendezvous host: {exc}", **context) from exc
    except OSError as exc:
        raise RendezvousError(f"{phase} failed: {exc}", **context) from exc
    finally:
        for sock in opened:
            sock.close()


def pair(name: str | bytes, host: str, port: int = DEFAULT_PORT, timeout: float | None = None,
         *, settings: ClientSettings | None = None) -> socket.socket:
    """Blocking form of :func:`pair_async`; returns a blocking socket connected to the peer.

    Safe to call from many threads at once. Inside a running event loop, await
    :func:`pair_async` instead (this call would block the loop).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("pair() blocks; inside a running event loop use `await pair_async(...)`")
    link = asyncio.run(pair_async(name, host, port, timeout, settings=settings))
    link.setblocking(True)
    return link
