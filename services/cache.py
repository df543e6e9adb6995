"""The one cache folder of this machine: demo data, the demo checkpoint, the embedded stack's state.

Standard library only, so that both sides can use it: the worker side (which makes the demo
assets with torch) and the coordinator side (which must never import torch) agree on one folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from services import envconfig


@dataclass(frozen=True)
class CacheSettings:
    """``COSMIC_CACHE_<FIELD>``, shared by every service that makes or finds the demo assets."""

    ENV_PREFIX: ClassVar[str] = "COSMIC_CACHE_"

    #: The folder; empty: ``$XDG_CACHE_HOME/cosmic-rendezvous`` (``~/.cache/...``).
    dir: str = ""


def cache_dir() -> Path:
    """``COSMIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cosmic-rendezvous`` (``~/.cache/...``)."""
    configured = envconfig.load(CacheSettings).dir
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"  # the standard variable, not ours
    return Path(base) / "cosmic-rendezvous"
