"""The communicator's wire format: framed, typed messages on one TCP link between two ranks.

Every message is one or more frames. A frame is a fixed 24-byte header, a small metadata block
and the payload::

    offset size field
    0      2    magic b"CR"
    2      1    version (1)
    3      1    kind: PICKLE, ARRAY, TENSOR, BYTES, LIST or ABORT
    4      1    op: the operation that sent it (P2P, BARRIER, BCAST, ...)
    5      1    reserved (0)
    6      2    metadata length
    8      8    operation sequence number (collectives started on this communicator)
    16     8    payload length

Arrays and tensors carry ``dtype|d0,d1,...`` as metadata and their raw bytes as payload, so they
are neither pickled nor copied on the way out and are received straight into a fresh array.
A LIST frame has no payload; its metadata is the element count, and the elements follow as
frames of their own. An ABORT frame tells a peer that the job failed, and why (JSON payload).
The op and sequence number let the receiver refuse a frame from a different collective instead
of misreading it.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from services.rendezvous.errors import FrameError

MAGIC = b"CR"
VERSION = 1
HEADER = struct.Struct("!2sBBBxHQQ")
HEADER_SIZE = HEADER.size
#: Largest metadata block accepted (a dtype and a shape need far less).
MAX_METADATA = 4096
#: Largest payload accepted in one frame: above any Lambda's memory (10 GiB), so a corrupt or
#: hostile length is refused before anything is allocated for it.
MAX_PAYLOAD = 16 << 30


class Kind(IntEnum):
    PICKLE = 0
    ARRAY = 1
    TENSOR = 2
    BYTES = 3
    LIST = 4
    ABORT = 5


class Op(IntEnum):
    P2P = 0
    BARRIER = 1
    BCAST = 2
    GATHER = 3
    SCATTER = 4
    REDUCE = 5
    ALLREDUCE = 6
    ALLGATHER = 7
    SCAN = 8


def pack_header(kind: Kind, op: Op, seq: int, metadata: bytes, payload_size: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, op, len(metadata), seq, payload_size) + metadata


def unpack_header(raw: bytes | bytearray | memoryview) -> tuple[Kind, Op, int, int, int]:
    """``(kind, op, seq, metadata length, payload length)``; raises FrameError on garbage."""
    magic, version, kind, op, meta_size, seq, payload_size = HEADER.unpack(raw)
    if magic != MAGIC or version != VERSION:
        raise FrameError(f"not a communicator frame (magic {bytes(magic)!r}, version {version})")
    try:
        return Kind(kind), Op(op), seq, meta_size, payload_size
    except ValueError:
        raise FrameError(f"unknown frame kind {kind} or op {op}") from None
