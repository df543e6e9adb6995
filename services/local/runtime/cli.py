"""``python -m services.local.runtime`` and ``cosmic worker``: serve the Invoke API from warm sandboxes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from services import envconfig, logs
from services.function import WorkerFunction
from services.local.errors import LocalError
from services.local.runtime.config import RuntimeSettings
from services.logs import event

#: Each setting's option; ``worker.*`` are the function's (:mod:`services.function`), shared with the coordinator.
_OPTIONS = {"host": "--host", "port": "--port", "worker.function": "--function", "handler": "--handler",
            "sandboxes": "--sandboxes", "worker.timeout": "--timeout", "memory_mb": "--memory-mb",
            "init_timeout": "--init-timeout"}


def _default(field: str) -> Any:
    value: Any = RuntimeSettings()
    for part in field.split("."):
        value = getattr(value, part)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    variables = {field: variable for variable, field in envconfig.variables(RuntimeSettings).items()}
    for field, option in _OPTIONS.items():
        default = _default(field)
        parser.add_argument(option, dest=field.replace(".", "_"), type=type(default), default=None,
                            help=f"env {variables[field]}; default {default}")
    parser.add_argument("--cpu-reserve", action="store_true", default=None,
                        help="env COSMIC_RUNTIME_CPU_RESERVE; give each sandbox's cgroup the largest CPU weight, so "
                             "that it gets its whole share on a busy machine (benchmarks); default off")
    parser.add_argument("--log-format", choices=["text", "json"], default=None)
    parser.add_argument("--log-level", default=None)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.log_level)
    try:
        worker = WorkerFunction.from_env(function=args.worker_function, timeout=args.worker_timeout)
        settings = RuntimeSettings.from_env(worker=worker, cpu_reserve=args.cpu_reserve,
                                            **{name: getattr(args, name) for name in _OPTIONS if "." not in name})
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
          port=api.server_address[1], function=settings.worker.function, handler=settings.handler,
          sandboxes=settings.sandboxes, timeout_s=settings.worker.timeout, memory_mb=settings.memory_mb,
          cpu_vcpus=round(pool.limiter.share.cores, 3), cpu_enforced_by=pool.limiter.share.enforced_by,
          cpu_not_enforced_because=pool.limiter.share.reason, cpu_reserved=settings.cpu_reserve,
          threads=pool.limiter.share.threads)
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
