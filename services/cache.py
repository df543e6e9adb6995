"""The one cache folder of this machine: demo data, the demo checkpoint, the embedded stack's state.

Standard library only, so that both sides can use it: the worker side (which makes the demo
assets with torch) and the coordinator side (which must never import torch) agree on one folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``COSMIC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cosmic-rendezvous`` (``~/.cache/...``)."""
    configured = os.environ.get("COSMIC_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cosmic-rendezvous"
