"""Command line of the rendezvous server: ``python -m services.rendezvous`` and ``cosmic rendezvous``.

Every option defaults to its ``COSMIC_RENDEZVOUS_*`` variable, then to :class:`ServerSettings`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from services import envconfig, logs
from services.rendezvous.config import SERVER_ENV_PREFIX, ServerSettings
from services.rendezvous.errors import HubUnavailable

_HELP = {field.name: field for field in dataclasses.fields(ServerSettings)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per server setting, named after the setting and its environment variable."""
    for field in dataclasses.fields(ServerSettings):
        variable = envconfig.env_name(SERVER_ENV_PREFIX, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=type(field.default),
                            default=None, metavar=field.name.upper(),
                            help=f"env {variable}; default {field.default}")
    parser.add_argument("--log-format", choices=["text", "json"], default=None,
                        help="env COSMIC_LOG_FORMAT; default text")
    parser.add_argument("--log-level", default=None, help="env COSMIC_LOG_LEVEL; default INFO")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code."""
    logs.configure(args.log_format, args.log_level)
    overrides = {name: getattr(args, name) for name in _HELP}
    try:
        settings = ServerSettings.from_env(**overrides)
    except envconfig.SettingsError as exc:
        print(f"rendezvous: {exc}", file=sys.stderr)
        return 2
    from services.rendezvous.server import RendezvousServer

    server = RendezvousServer(settings)
    try:
        _run_loop(server.serve_until_signalled(), settings.loop)
    except HubUnavailable as exc:
        print(f"rendezvous: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rendezvous: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_loop(main: object, loop: str) -> None:
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("rendezvous: --loop uvloop asked for, but uvloop is not installed") from None
        else:
            uvloop.run(main)  # type: ignore[arg-type]
            return
    asyncio.run(main)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.rendezvous",
                                     description="TCPunch-compatible rendezvous server.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
