"""What the embedded stack's S3 holds, kept on disk: moto's server keeps every object in memory.

A snapshot is a folder (``<cache>/embedded/s3-snapshot/``) of plain files, one per object, and a
``manifest.json`` naming, per bucket and key, the file, size, ETag, content type and user metadata::

    {"version": 1, "taken_at": 1767225600.0,
     "buckets": {"cosmicai-data": {"25MB/1.pt": {"file": "3f2a...", "size": 26214400, "etag": "...",
                                                 "content_type": "binary/octet-stream", "metadata": {}}}}}

Why files through the S3 API rather than moto's own means: moto's recorder replays every request
(each rewrite of a job's journal, every multipart part with its random upload id, base64 in one
JSON line per request), so its log grows without bound and its replay can fail; pickling moto's
backends ties the snapshot to moto's internals. A GET per object streamed to a file, and a PUT per
file to restore, use only the S3 API, cost memory independent of the object's size (25-100 MB
partitions stream through a 1 MiB buffer), and leave a folder anyone can read.

Taking a snapshot is incremental: an object whose ETag and size the manifest already holds, with
its file in place, is not downloaded again, so a snapshot of an unchanged store is one listing.
Each download goes to a new file and the manifest is replaced atomically, so a snapshot cut short
(a crash, the server stopped under it) leaves the previous one whole. Restoring records the ETags
the new server gives, so the snapshot after a restore downloads nothing either.

Not kept: versions other than the latest, multipart uploads in progress, bucket settings (policy,
lifecycle, CORS), tags and ACLs. A manifest that cannot be read is moved aside, logged and
skipped: the stack starts empty rather than not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.local.errors import SnapshotUnreadable
from services.local.filelock import locked
from services.logs import event

log = logging.getLogger("cosmic.coordinator.embedded")

VERSION = 1
MANIFEST = "manifest.json"
OBJECTS = "objects"
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What a snapshot or a restore did: objects and bytes it holds, and how many it moved."""

    folder: Path
    buckets: int
    objects: int
    bytes: int
    moved: int
    skipped: int = 0

    def describe(self) -> str:
        return f"{self.objects} objects in {self.buckets} buckets, {self.bytes / 1e6:.1f} MB, in {self.folder}"


def _locked(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One snapshot or restore of a folder at a time (a coordinator's periodic one, `cosmic stop`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return locked(folder.parent / f"{folder.name}.lock")


def read_manifest(folder: Path) -> dict[str, dict[str, dict[str, Any]]] | None:
    """The manifest's buckets, None when there is no snapshot; SnapshotUnreadable when it is not one."""
    path = folder / MANIFEST
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise SnapshotUnreadable(f"{path}: {exc}", path=path) from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise SnapshotUnreadable(f"{path}: not a version {VERSION} snapshot manifest", path=path)
    buckets = document.get("buckets")
    fields = {"file": str, "size": int, "etag": str}
    if not isinstance(buckets, dict) or not all(
            isinstance(objects, dict) and all(
                isinstance(entry, dict) and all(isinstance(entry.get(name), kind) for name, kind in fields.items())
                for entry in objects.values())
            for objects in buckets.values()):
        raise SnapshotUnreadable(f"{path}: its buckets are not maps of key to file, size and etag", path=path)
    return buckets


def take(client: Any, folder: Path) -> Outcome:
    """Save every bucket's objects under ``folder``, downloading only what changed since the last time."""
    with _locked(folder):
        try:
            previous = read_manifest(folder) or {}
        except SnapshotUnreadable:
            previous = {}  # the objects are all fetched again: nothing is lost by ignoring it
        objects_dir = folder / OBJECTS
        objects_dir.mkdir(parents=True, exist_ok=True)
        buckets: dict[str, dict[str, dict[str, Any]]] = {}
        moved = total = 0
        for bucket in (b["Name"] for b in client.list_buckets().get("Buckets", [])):
            kept = buckets.setdefault(bucket, {})
            for page in _pages(client, bucket):
                for item in page.get("Contents", []):
                    key, size, etag = item["Key"], int(item["Size"]), item["ETag"]
                    old = previous.get(bucket, {}).get(key)
                    if old and old["etag"] == etag and old["size"] == size and _has(objects_dir, old):
                        kept[key] = old
                    else:
                        entry = _download(client, bucket, key, objects_dir)
                        if entry is None:
                            continue  # deleted since the listing
                        kept[key] = entry
                        moved += 1
                    total += kept[key]["size"]
        _write_manifest(folder, buckets)
        _remove_unreferenced(objects_dir, buckets)
    outcome = Outcome(folder, len(buckets), sum(len(o) for o in buckets.values()), total, moved)
    event(log, "embedded_snapshot_taken", folder=str(folder), buckets=outcome.buckets, objects=outcome.objects,
          bytes=outcome.bytes, downloaded=moved)
    return outcome


def restore(client: Any, folder: Path) -> Outcome | None:
    """PUT every object of the snapshot in ``folder`` (buckets made if missing); None without one.

    An unreadable manifest is moved aside (``<folder>.unreadable-<time>``) and logged, and nothing is
    restored; an object whose file is missing or of the wrong size is logged and skipped.
    """
    with _locked(folder):
        try:
            buckets = read_manifest(folder)
        except SnapshotUnreadable as exc:
            aside = folder.with_name(f"{folder.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            event(log, "embedded_snapshot_unreadable", logging.ERROR, error=str(exc), moved_to=str(aside),
                  action="starting with an empty S3; the files are kept there")
            return None
        if buckets is None:
            return None
        from services.s3store import S3Store  # boto3: only where a snapshot is restored

        objects_dir = folder / OBJECTS
        moved = skipped = total = 0
        for bucket, objects in buckets.items():
            S3Store(client).ensure_bucket(bucket)
            for key, entry in objects.items():
                path = objects_dir / entry["file"]
                if not _has(objects_dir, entry):
                    event(log, "embedded_snapshot_object_skipped", logging.ERROR, bucket=bucket, key=key,
                          path=str(path), reason="file missing or not of the recorded size")
                    skipped += 1
                    continue
                extra = {"ContentType": entry["content_type"]} if entry.get("content_type") else {}
                with open(path, "rb") as body:
                    answer = client.put_object(Bucket=bucket, Key=key, Body=body,
                                               Metadata=dict(entry.get("metadata") or {}), **extra)
                entry["etag"] = answer["ETag"]  # the new server's: the next snapshot downloads nothing
                moved += 1
                total += entry["size"]
        for objects in buckets.values():
            for key in [key for key, entry in objects.items() if not _has(objects_dir, entry)]:
                del objects[key]
        _write_manifest(folder, buckets)
    outcome = Outcome(folder, len(buckets), moved, total, moved, skipped)
    event(log, "embedded_snapshot_restored", folder=str(folder), buckets=outcome.buckets, objects=moved,
          bytes=total, skipped=skipped)
    return outcome


def _pages(client: Any, bucket: str) -> Iterator[dict[str, Any]]:
    """The bucket's listing pages; none when it was deleted since it was listed (a demo's state bucket)."""
    from botocore.exceptions import ClientError

    try:
        yield from client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise


def _has(objects_dir: Path, entry: dict[str, Any]) -> bool:
    try:
        return (objects_dir / entry["file"]).stat().st_size == entry["size"]
    except OSError:
        return False


def _download(client: Any, bucket: str, key: str, objects_dir: Path) -> dict[str, Any] | None:
    """Stream one object to a new file; its manifest entry (the ETag of what was read, not listed)."""
    from botocore.exceptions import ClientError

    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    name = hashlib.sha256(f"{bucket}\0{key}\0{answer['ETag']}\0{time.time_ns()}".encode()).hexdigest()
    partial = objects_dir / f"{name}.partial"
    with answer["Body"] as body, open(partial, "wb") as out:
        shutil.copyfileobj(body, out, CHUNK)
    partial.replace(objects_dir / name)
    return {"file": name, "size": partial.parent.joinpath(name).stat().st_size, "etag": answer["ETag"],
            "content_type": answer.get("ContentType", ""), "metadata": answer.get("Metadata", {})}


def _write_manifest(folder: Path, buckets: dict[str, dict[str, dict[str, Any]]]) -> None:
    partial = folder / f"{MANIFEST}.partial"
    with open(partial, "w") as out:
        json.dump({"version": VERSION, "taken_at": time.time(), "buckets": buckets}, out)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(folder / MANIFEST)


def _remove_unreferenced(objects_dir: Path, buckets: dict[str, dict[str, dict[str, Any]]]) -> None:
    referenced = {entry["file"] for objects in buckets.values() for entry in objects.values()}
    for path in objects_dir.iterdir():
        if path.name not in referenced:
            path.unlink(missing_ok=True)
