"""``cosmic serve`` and ``python -m services.coordinator``: the coordinator's API under uvicorn.

On start it resumes every job a previous coordinator left running (their state is in S3). With
``--embedded`` it first starts (or reattaches to) the local stack: S3 server, Lambda runtime,
rendezvous server, and points itself at them; it records itself as using the stack (so no other
command resizes or stops it under it) and saves what S3 holds to the cache folder every
``--snapshot-interval`` seconds, so that a ``kill -9`` of moto's server loses at most that much.
It leaves the stack running when it exits: ``cosmic stop`` stops it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any

from services import argtypes, envconfig, logs
from services.coordinator import config, heap
from services.logs import event

log = logging.getLogger("cosmic.coordinator.cli")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="env COSMIC_COORDINATOR_HOST; default 127.0.0.1")
    parser.add_argument("--port", type=argtypes.port, default=None, help="env COSMIC_COORDINATOR_PORT; default 8000")
    parser.add_argument("--embedded", action="store_true",
                        help="start (or reattach to) the local S3 server, Lambda runtime and rendezvous server")
    parser.add_argument("--sandboxes", type=argtypes.positive, default=None,
                        help="embedded: worker sandboxes (default 4, or what the running stack has); another count "
                             "restarts the stack's runtime alone, keeping S3 and the rendezvous")
    parser.add_argument("--memory-mb", type=argtypes.positive, default=None,
                        help="embedded: the sandboxes' configured Lambda memory, 128..10240 MB, which sets each "
                             "sandbox's CPU share as Lambda does (1769 MB: one vCPU); env COSMIC_RUNTIME_MEMORY_MB; "
                             "default what the running stack has, else 10240; another size restarts its runtime")
    parser.add_argument("--snapshot-interval", type=argtypes.seconds, default=60.0,
                        help="embedded: seconds between saves of S3 to the cache folder (0: only on `cosmic stop`)")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    parser.add_argument("--log-level", default=None)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    if args.embedded:
        from services.local.seeding import seed  # lazily: it spawns processes
        from services.local.stack import EmbeddedError, ensure_stack

        try:
            stack = ensure_stack(sandboxes=args.sandboxes, user="cosmic serve", memory_mb=args.memory_mb)
        except EmbeddedError as exc:
            print(f"cosmic serve: {exc}", file=sys.stderr)
            return 1
        stack.export()
        if args.snapshot_interval > 0:
            _save_periodically(stack, args.snapshot_interval)
        seed(stack)  # the demo data and checkpoint, where examples/payload.json points (made once, ~1 min)
    try:
        settings = config.load(host=args.host, port=args.port)
    except envconfig.SettingsError as exc:
        print(f"cosmic serve: {exc}")
        return 2
    import uvicorn

    from services.coordinator.app import create_app
    from services.coordinator.service import Coordinator

    coordinator = Coordinator(settings)
    app = create_app(coordinator)
    heap.settle()  # before any job: what the process keeps for good, out of every collection
    coordinator.resume_when_s3_answers()  # S3 down at start: the API serves (503s, /readyz) and resumes later
    event(log, "coordinator_start", host=settings.host, port=settings.port, token=bool(settings.api_token))
    uvicorn.run(app, host=settings.host, port=settings.port,
                log_level="warning", timeout_graceful_shutdown=5)
    return 0


def _save_periodically(stack: Any, interval: float) -> None:
    """A daemon thread saving the stack's S3 every ``interval`` s (incremental: unchanged objects cost a listing)."""
    from botocore.exceptions import BotoCoreError, ClientError

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                stack.snapshot()
            except (BotoCoreError, ClientError, OSError) as exc:  # S3 stopped or busy: the next round tries again
                event(log, "embedded_snapshot_failed", logging.WARNING, error=str(exc))

    threading.Thread(target=loop, name="s3-snapshot", daemon=True).start()
