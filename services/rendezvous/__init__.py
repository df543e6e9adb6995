"""Rendezvous: a TCPunch-compatible pairing server and the ``pair()`` client.

Workers behind NAT meet through the server and then talk over TCP connections punched through
their NATs. The server module and this package import only the standard library.
"""

from services.rendezvous.client import pair, pair_async
from services.rendezvous.config import ClientSettings, ServerSettings
from services.rendezvous.errors import InvalidName, PeerGone, ProtocolError, RendezvousError, RendezvousTimeout
from services.rendezvous.server import RendezvousServer

__all__ = [
    "ClientSettings",
    "InvalidName",
    "PeerGone",
    "ProtocolError",
    "RendezvousError",
    "RendezvousServer",
    "RendezvousTimeout",
    "ServerSettings",
    "pair",
    "pair_async",
]
