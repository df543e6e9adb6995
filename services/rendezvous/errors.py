"""Exceptions of the rendezvous service: pairing (``RendezvousError``) and the communicator
(``CommError``, below).

::

    RendezvousError            anything that stops a pairing; carries the name and server address
    ├── RendezvousTimeout      the overall deadline passed; ``phase`` says where it was spent
    ├── ProtocolError          the server answered something the protocol does not allow
    ├── PeerGone               the server closed the connection before naming a peer
    └── InvalidName            the name cannot travel on the wire (also a ValueError)

Raised and handled inside the service, where they become one of the above, a closed connection
or an exit status::

    NameRejected               a name the protocol cannot carry; ``reason`` is the server's metric label
                               (also a ValueError; ``pair()`` turns it into InvalidName)
    FrameError                 bytes on a link that are not a frame (also a ValueError; a CollectiveMismatch)
    RegistrationError          ``register`` could not point the DNS record at this task (exit status 1)
    HubUnavailable             ``COSMIC_RENDEZVOUS_HUB=c`` but the C hub is not built (exit status 2)
"""

from __future__ import annotations


class RendezvousError(Exception):
    """A pairing failed. ``name`` and ``server`` say which pairing, against which server."""

    def __init__(self, message: str, *, name: bytes | None = None, server: str | None = None) -> None:
        context = []
        if name is not None:
            context.append(f"name={repr(bytes(name))[2:-1]}")
        if server is not None:
            context.append(f"server={server}")
        super().__init__(f"{message} ({', '.join(context)})" if context else message)
        self.name = name
        self.server = server


class RendezvousTimeout(RendezvousError, TimeoutError):
    """The deadline passed. ``phase`` is one of connect, register, wait_peer or punch."""

    def __init__(self, message: str, *, phase: str, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.phase = phase


class ProtocolError(RendezvousError):
    """The server sent bytes that are not a valid reply."""


class PeerGone(RendezvousError):
    """The server closed the rendezvous connection before sending the peer's address.

    It does so when it shuts down, when the waiter TTL passes, or when a limit refuses us.
    """


class InvalidName(RendezvousError, ValueError):
    """The pairing name is empty, longer than 100 bytes, or contains a NUL byte."""


class NameRejected(ValueError):
    """A pairing name that the protocol cannot carry; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class FrameError(ValueError):
    """Bytes on a link that are not a frame of this protocol."""


class HubUnavailable(RuntimeError):
    """The C hub was asked for but is not built (no compiler at install time, or not Linux)."""


class RegistrationError(RuntimeError):
    """The record could not be written; the message says which step failed and why."""


class CommError(Exception):
    """A communicator operation failed. ``rank`` is the rank that raised it.

    ::

        CommError
        ├── CollectiveTimeout    a peer did not answer (or never arrived) within the deadline
        ├── CollectiveMismatch   a peer sent a frame of another operation (ranks called
        │                        different collectives, or in a different order)
        └── RankFailed           a peer rank died, or aborted because another one did
    """

    def __init__(self, message: str, *, rank: int) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank


class CollectiveTimeout(CommError, TimeoutError):
    """The deadline passed; ``peers`` are the ranks still awaited."""

    def __init__(self, message: str, *, rank: int, peers: list[int]) -> None:
        super().__init__(message, rank=rank)
        self.peers = peers


class CollectiveMismatch(CommError):
    """A frame from another operation arrived where this one expected its own."""


class RankFailed(CommError):
    """``failed_rank`` is gone (its link closed or reset) or reported a failure of its own."""

    def __init__(self, message: str, *, rank: int, failed_rank: int) -> None:
        super().__init__(message, rank=rank)
        self.failed_rank = failed_rank
