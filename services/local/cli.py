"""``cosmic stop``: stop the embedded stack of this cache folder, S3 saved first.

What ``cosmic serve --embedded`` and ``cosmic demo`` start outlives them (a restarted coordinator
reattaches); this is how it ends. What S3 holds is saved to ``<cache>/embedded/s3-snapshot/`` and
put back by the next start. A stack a live command still uses (``cosmic serve --embedded``) is
left running unless ``--force``: its coordinator would answer 500 from then on.
"""

from __future__ import annotations

import argparse
import sys

from services import logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Stop the embedded stack that `cosmic serve --embedded` or `cosmic demo` started in this cache folder "
        "(COSMIC_CACHE_DIR): moto's S3 server, the local Lambda runtime and its sandboxes, the rendezvous server. "
        "What S3 holds is saved first to <cache>/embedded/s3-snapshot/ and restored by the next start. "
        "Says what it stopped; exits 0 when nothing was running, 1 when it refused or S3 could not be saved.")
    parser.add_argument("--force", action="store_true",
                        help="stop it even while a live command (a `cosmic serve --embedded` coordinator) uses it, "
                             "or when its S3 cannot be saved")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    parser.add_argument("--log-level", default="WARNING")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    from services.local.stack import EmbeddedError, recorded_stack, stack_dir

    recorded = recorded_stack()
    if recorded is None:
        print(f"cosmic stop: no embedded stack is recorded in {stack_dir()}; nothing to stop")
        return 0
    users = recorded.other_users()
    if users and not args.force:
        print(f"cosmic stop: the embedded stack in {stack_dir()} is in use by "
              f"{', '.join(user.describe() for user in users)}; stop that first, or pass --force. Left running: "
              f"{recorded.describe()}", file=sys.stderr)
        return 1
    dead = [service.name for service in recorded.services if not service.alive()]
    try:
        stopped = recorded.stop(require_saved=not args.force)
    except EmbeddedError as exc:
        print(f"cosmic stop: {exc}", file=sys.stderr)
        return 1
    print(f"stopped the embedded stack in {stack_dir()}: {stopped.stack.describe()}"
          + (f" (already not running: {', '.join(dead)})" if dead else ""))
    if stopped.saved is not None:
        print(f"S3 saved: {stopped.saved.describe()} ({stopped.saved.moved} objects fetched this time)")
        return 0
    print(f"S3 not saved: {stopped.error}", file=sys.stderr)
    return 1
