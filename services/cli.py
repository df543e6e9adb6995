"""``cosmic``: the one command line, loading each subcommand's module only when it runs.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Loading lazily
keeps ``cosmic rendezvous`` free of torch and boto3, so each image needs only its own extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from services import __version__

#: Subcommands that exist: name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("services.client.demo", "run the main job end to end on this machine"),
    "rendezvous": ("services.rendezvous.cli", "run the TCPunch-compatible rendezvous server"),
    "runtime": ("services.local.runtime.cli", "run the local Lambda runtime (Invoke API, warm sandboxes)"),
    "worker": ("services.local.runtime.cli", "the same as `cosmic runtime` (its former name)"),
    "convert-checkpoint": ("services.worker.convert", "convert a legacy pickled model to a safetensors state_dict"),
    "export": ("services.worker.export", "export a state_dict for the lean engine (a cold start without torch)"),
    "serve": ("services.coordinator.cli", "run the coordinator's HTTP API (--embedded: with a local stack)"),
    "stop": ("services.local.cli", "stop the embedded stack of this cache folder, its S3 saved for the next start"),
    "submit": ("services.client.submit", "submit a job to the coordinator and follow it"),
    "status": ("services.client.status", "a job's progress, or the list of jobs"),
    "cancel": ("services.client.cancel", "cancel a job: its ranks stop within about a second"),
    "retry": ("services.client.retry", "re-run the failed ranks of a failed job"),
    "logs": ("services.client.logs", "the log tail of a rank's invocation"),
    "report": ("services.client.report", "a job's cost and duration report, and its plots"),
    "sweep": ("services.client.sweep", "jobs over world sizes and partition sizes, and their table"),
    "data": ("services.client.data", "make partitions (legacy layout), upload them to S3, list what is there"),
    "plan": ("services.client.plan", "predict time and cost per Lambda memory and world size; the cheapest by a "
                                     "deadline"),
    "deploy": ("services.deploy.cli", "build and push the images, deploy the stacks to AWS, smoke test"),
}


def _usage() -> str:
    lines = [f"usage: cosmic COMMAND [options]   (cosmic {__version__})", "", "commands:"]
    lines += [f"  {name:<20}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "`cosmic COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cosmic: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cosmic {command}", description=help_text)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(rest)))


if __name__ == "__main__":
    raise SystemExit(main())
