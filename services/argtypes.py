"""Argument types for the ``cosmic`` commands: every option checked where it is parsed (standard library only).

argparse turns an ``ArgumentTypeError`` into ``cosmic X: error: argument --limit: ...`` and exit
2, before anything is sent: ``--limit 0`` used to list one job, quietly, because the API clamps.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

#: What a job id, a prefix segment or a name may hold: printable, no spaces or path tricks.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its messages
    return parse


#: At least 1: counts, world sizes, partition sizes, limits.
positive = whole(1)
#: At least 0: ranks.
rank = whole(0)


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more (a finite number)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


#: A TCP port to listen on (0: one the system picks, as tests and `--port 0` users rely on).
port = whole(0, 65535)


def job_id(text: str) -> str:
    """A job id as the coordinator makes them (letters, digits, ``.``, ``_``, ``:``, ``-``)."""
    if not _ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (`cosmic status` lists them)")
    return text


def idempotency_key(text: str) -> str:
    """1 to 200 characters (the API's ``Idempotency-Key`` header limit), no control characters."""
    if not 1 <= len(text) <= 200 or not text.isprintable():
        raise argparse.ArgumentTypeError("must be 1 to 200 printable characters")
    return text


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket(text: str) -> str:
    """An S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens."""
    if not _BUCKET.fullmatch(text) or ".." in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not an S3 bucket name (3 to 63 of a-z, 0-9, '.', '-')")
    return text


def prefix(text: str) -> str:
    """An S3 key prefix without leading or trailing ``/``, free of ``..`` and empty segments."""
    cleaned = text.strip("/")
    parts = cleaned.split("/")
    if not cleaned or any(part in ("", ".", "..") for part in parts) or any(ch.isspace() for ch in cleaned):
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable S3 prefix (like 100MB or data/100MB)")
    return cleaned
