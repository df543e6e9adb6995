"""``python -m services.local.runtime`` and ``cosmic worker``: serve the Invoke API from warm sandboxes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading

from services import envconfig, logs
from services.local.errors import LocalError
from services.local.runtime.config import ENV_PREFIX, RuntimeSettings
from services.logs import event

_OPTIONS = {"worker_host": "--host", "worker_port": "--port", "worker_function": "--function",
            "worker_handler": "--handler", "sandboxes": "--sandboxes", "worker_timeout": "--timeout",
            "worker_memory_mb": "--memory-mb", "worker_init_timeout": "--init-timeout"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(RuntimeSettings):
        parser.add_argument(_OPTIONS[field.name], dest=field.name, type=type(field.default), default=None,
                            help=f"env {envconfig.env_name(ENV_PREFIX, field.name)}; default {field.default}")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    parser.add_argument("--log-level", default=None)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        settings = RuntimeSettings.from_env(**{name: getattr(args, name) for name in _OPTIONS})
    except envconfig.SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    from services.local.runtime.front import InvokeApi, Pool

    pool = Pool(settings)
    try:
        pool.start()
        api = InvokeApi(settings, pool)
    except (LocalError, RuntimeError, OSError) as exc:
        pool.stop()
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    threading.Thread(target=api.serve_forever, daemon=True).start()
    event(logging.getLogger("cosmic.worker.runtime"), "listening", host=api.server_address[0],
          port=api.server_address[1], function=settings.worker_function, handler=settings.worker_handler,
          sandboxes=settings.sandboxes, timeout_s=settings.worker_timeout, threads=settings.threads_per_sandbox)
    stopping.wait()
    api.shutdown()
    api.server_close()
    pool.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.local.runtime",
                                     description="Local Lambda runtime: the Invoke API in front of warm sandboxes.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
