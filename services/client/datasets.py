"""Partitions where jobs look for them: made (seeded, legacy layout), uploaded, listed.

Straight to S3 with the user's own credentials through the one S3 seam (:class:`S3Store`), not
through the coordinator: the API is no place for 100 MB bodies. boto3 finds credentials and the
endpoint as it always does (``AWS_ENDPOINT_URL_S3`` for a local S3); ``embedded=True`` uses the
embedded stack of this cache folder instead. torch is imported only to generate, never at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.client.errors import CommandError
from services.keys import SAMPLES_PER_PARTITION, partition_number

if TYPE_CHECKING:
    from services.s3store import S3Store

#: The bucket of the example payload (``data_bucket``) and of the embedded stack.
DEFAULT_BUCKET = "cosmicai-data"
#: The sizes the seeded generator makes, in the legacy study's order.
SIZES = tuple(SAMPLES_PER_PARTITION)


def store(embedded: bool = False) -> S3Store:
    """The user's S3 (boto3's own resolution), or the running embedded stack's."""
    from services.s3store import S3Store

    if not embedded:
        return S3Store()
    from services.local.stack import running_stack

    stack = running_stack()
    if stack is None:
        raise CommandError("no embedded stack is running in this cache folder (`cosmic serve --embedded`)")
    return S3Store(stack.s3_client())


def generate(size: str, count: int, folder: Path, say: Callable[[str], None] = print) -> list[Path]:
    """``folder/1.pt .. {count}.pt`` of ``size``; files already there are kept (same seed, same bytes)."""
    if size not in SAMPLES_PER_PARTITION:
        raise CommandError(f"no generator for {size!r}: the sizes are {', '.join(SIZES)}")
    try:
        from services.worker.demo_assets import write_partitions  # torch: only here
    except ImportError as exc:
        raise CommandError(f"generating partitions needs the worker's packages ({exc}): "
                           "pip install -e '.[worker]'") from None
    say(f"generating {count} partition(s) of {size} ({SAMPLES_PER_PARTITION[size]:,} samples each) in {folder}/")
    try:
        return write_partitions(size, count, folder, on_write=lambda path: say(f"  {path}"))
    except OSError as exc:
        raise CommandError(f"cannot write partitions into {folder}: {exc.strerror or exc}") from None


def ensure(s3: S3Store, bucket: str, size: str, count: int, say: Callable[[str], None] = print) -> int:
    """Partitions ``1..count`` under ``size/``: those missing are generated (into the cache folder,
    reused next time) and uploaded. Returns how many were uploaded."""
    from services.cache import cache_dir

    have = set(folder(s3, bucket, size).numbers)
    if have >= set(range(1, count + 1)):
        return 0
    paths = generate(size, count, cache_dir() / "partitions" / size, say)
    return s3.upload_changed(bucket, [(path, f"{size}/{path.name}") for path in paths])


def partition_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The partition files directly in ``folder`` in numeric order, and the other files (not uploaded)."""
    if not folder.is_dir():
        raise CommandError(f"{folder} is not a folder")
    files = sorted(path for path in folder.iterdir() if path.is_file())
    numbered = sorted((path for path in files if partition_number(path.name) is not None),
                      key=lambda path: partition_number(path.name) or 0)
    return numbered, [path for path in files if path not in numbered and not path.name.endswith(".partial")]


def upload(s3: S3Store, bucket: str, folder: Path, prefix: str) -> tuple[list[str], int]:
    """Every partition file of ``folder`` to ``prefix/{i}.pt`` (the name kept), skipping objects of
    the same size already there; returns the keys and how many were sent."""
    numbered, others = partition_files(folder)
    if not numbered:
        skipped = f" (not partitions: {', '.join(path.name for path in others[:5])})" if others else ""
        raise CommandError(f"no partition files ({{number}}.pt, .npz or .safetensors, from 1.pt) in "
                           f"{folder}{skipped}; `cosmic data generate` makes them")
    keys = [f"{prefix}/{path.name}" for path in numbered]
    return keys, s3.upload_changed(bucket, list(zip(numbered, keys, strict=True)))


@dataclass(frozen=True)
class Folder:
    """What a prefix holds: its partitions' numbers and bytes."""

    prefix: str
    numbers: list[int]
    size: int

    def describe(self) -> str:
        if not self.numbers:
            return f"{self.prefix}/  no partitions"
        first, last = self.numbers[0], self.numbers[-1]
        gaps = last - first + 1 - len(self.numbers)
        return (f"{self.prefix}/  {len(self.numbers)} partition{'s' if len(self.numbers) != 1 else ''} "
                f"({first}.pt to {last}.pt{f', {gaps} missing between' if gaps else ''}), {_bytes(self.size)}")


def folder(s3: S3Store, bucket: str, prefix: str) -> Folder:
    """The partitions directly under ``prefix``, as a job planned on it would see them."""
    from services.coordinator.planning import list_partitions

    found = list_partitions(s3, bucket, prefix)
    return Folder(prefix.strip("/"), [partition_number(p.key) or 0 for p in found], sum(p.size for p in found))


def listing(s3: S3Store, bucket: str, prefix: str | None) -> str:
    """``cosmic data ls``: one prefix's partitions, or each top-level prefix's."""
    if prefix:
        lines = [folder(s3, bucket, prefix).describe()]
        below = [name.rstrip("/") for name in s3.folders(bucket, prefix.strip("/") + "/")]
        lines += [f"  {name}/" for name in below]
    else:
        lines = [folder(s3, bucket, name.rstrip("/")).describe() for name in s3.folders(bucket)]
    return "\n".join([f"s3://{bucket}/", *(f"  {line}" for line in lines or ["(empty)"])])


def _bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
