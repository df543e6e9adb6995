"""Rendezvous: a TCPunch-compatible pairing server and the ``pair()`` client.

Workers behind NAT meet through the server and then talk over TCP connections punched through
their NATs; the :class:`Communicator` runs collectives over those links. This package imports
only the standard library; numpy and torch are imported when a value needs them.
"""

from services.rendezvous.client import pair, pair_async
from services.rendezvous.comm import Communicator
from services.rendezvous.config import ClientSettings, ServerSettings
from services.rendezvous.errors import (
    CollectiveMismatch,
    CollectiveTimeout,
    CommError,
    InvalidName,
    PeerGone,
    ProtocolError,
    RankFailed,
    RendezvousError,
    RendezvousTimeout,
)
from services.rendezvous.server import RendezvousServer

__all__ = [
    "ClientSettings",
    "CollectiveMismatch",
    "CollectiveTimeout",
    "CommError",
    "Communicator",
    "InvalidName",
    "PeerGone",
    "ProtocolError",
    "RankFailed",
    "RendezvousError",
    "RendezvousServer",
    "RendezvousTimeout",
    "ServerSettings",
    "pair",
    "pair_async",
]
