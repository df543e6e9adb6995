"""The Lambda control plane's read calls, so that capacity is known here as it is on AWS.

A coordinator asks a function's capacity before it fans a job out: ``GetFunction`` and
``GetFunctionConcurrency`` (its reserved concurrency), ``GetAccountSettings`` (the account's
unreserved concurrency) and ``ListFunctions``. On this runtime the one function's capacity is
its sandbox count: it is reported as the function's reserved concurrency and as the account's
whole limit, so that code written for AWS reads the right number here without a special case.
Shapes follow the Lambda API reference; boto3 parses them as it parses AWS's answers.
"""

from __future__ import annotations

import re
from typing import Any

from services.local.runtime.config import RuntimeSettings

ACCOUNT = "000000000000"
_FUNCTION = re.compile(r"^/2015-03-31/functions/(?P<name>[^/?]+)/?(?:\?.*)?$")
_CONCURRENCY = re.compile(r"^/2019-09-30/functions/(?P<name>[^/?]+)/concurrency/?(?:\?.*)?$")
_FUNCTIONS = re.compile(r"^/2015-03-31/functions/?(?:\?.*)?$")
_ACCOUNT_SETTINGS = re.compile(r"^/2016-08-19/account-settings/?(?:\?.*)?$")


def function_arn(name: str, region: str) -> str:
    """The ARN this runtime gives its function, as the control plane and the sandboxes' context show it."""
    return f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"


def configuration(settings: RuntimeSettings, region: str) -> dict[str, Any]:
    """The function's ``FunctionConfiguration`` as GetFunction and ListFunctions return it."""
    name = settings.worker.function
    return {
        "FunctionName": name,
        "FunctionArn": function_arn(name, region),
        "PackageType": "Image",
        "Handler": settings.handler,
        "MemorySize": settings.memory_mb,
        "Timeout": int(settings.worker.timeout),
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "Version": "$LATEST",
        "Architectures": ["x86_64"],
    }


def answer(path: str, settings: RuntimeSettings, names: set[str], region: str,
           function_name: Any) -> dict[str, Any] | str | None:
    """The body for a read call at ``path``; None when ``path`` is no such call; the function's name
    (a ``str``) when the call names a function this runtime does not serve."""
    capacity = settings.sandboxes
    if _ACCOUNT_SETTINGS.match(path):
        return {"AccountLimit": {"TotalCodeSize": 80_530_636_800, "CodeSizeUnzipped": 262_144_000,
                                 "CodeSizeZipped": 52_428_800, "ConcurrentExecutions": capacity,
                                 "UnreservedConcurrentExecutions": 0},
                "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 1}}
    if _FUNCTIONS.match(path):
        return {"Functions": [configuration(settings, region)]}
    for pattern in (_CONCURRENCY, _FUNCTION):
        match = pattern.match(path)
        if match is None:
            continue
        name = function_name(match["name"])
        if name not in names:
            return str(name)
        if pattern is _CONCURRENCY:
            return {"ReservedConcurrentExecutions": capacity}
        return {"Configuration": configuration(settings, region),
                "Code": {"RepositoryType": "ECR", "ImageUri": "local"},
                "Concurrency": {"ReservedConcurrentExecutions": capacity}}
    return None
