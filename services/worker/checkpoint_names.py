"""Which file of a model folder is the checkpoint, and where a converted one goes: no torch here.

Split from :mod:`.checkpoints` (which loads checkpoints, with torch) because the native path finds
the checkpoint before it knows whether torch will run at all: with an export it never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CONVERTED_SUFFIX = ".cosmic.safetensors"
#: Checkpoint suffixes by preference: safetensors cannot hold code and loads without unpickling.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def converted_path(original: Path) -> Path:
    """Where ``cosmic convert-checkpoint`` puts ``original`` 's state_dict: beside it, so a model
    folder on S3 carries both and :func:`choose_checkpoint` picks the converted one."""
    name = original.name
    stem = name[: -len(CONVERTED_SUFFIX)] if name.endswith(CONVERTED_SUFFIX) else Path(name).stem
    return original.with_name(stem + CONVERTED_SUFFIX)


def choose_checkpoint(keys: Iterable[str]) -> str | None:
    """The key to load among a model folder's S3 keys: converted safetensors, other safetensors,
    then pickled state_dicts; sorted within a rank so every worker picks the same file."""

    def rank(key: str) -> int | None:
        name = key.rsplit("/", 1)[-1].lower()
        if not name or key.endswith("/"):
            return None
        if name.endswith(CONVERTED_SUFFIX):
            return 0
        if name.endswith(".safetensors"):
            return 1
        return 2 if name.endswith(PICKLE_SUFFIXES) else None

    ranked = sorted((r, key) for key in keys if (r := rank(key)) is not None)
    return ranked[0][1] if ranked else None
