"""Free TCP ports on loopback, for child processes that will bind them a moment later.

A port is free when asked and taken only when the child binds it, so two ports asked for one
after the other, before either child has started, can be the same one: the kernel may hand out
a port again as soon as its probe socket closes. :func:`free_ports` holds every probe open until
it has them all, so the ports of one call are distinct. Standard library only.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that nothing on 127.0.0.1 is bound to right now."""
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


def free_port() -> int:
    """One port that nothing on 127.0.0.1 is bound to right now."""
    return free_ports(1)[0]
