"""What each route of the API may answer, for its OpenAPI schema (and so ``/docs``): every status
and every content type, so that a client generated from the schema expects what it will get.

The statuses are those of :mod:`.errors` (each class carries its own), of the token check (401),
of the cross-site check (403, :mod:`.auth`) and of the body limit (413, :mod:`.limits`).
"""

from __future__ import annotations

from typing import Any

_DETAIL = {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}
_WHY = {
    401: "A token is configured and the request carries neither ``Authorization: Bearer <token>`` nor a "
         "dashboard session cookie",
    403: "Refused: a request from another site (``Origin``, ``Sec-Fetch-Site``), or a dashboard session's "
         "change without its ``X-CSRF-Token``",
    404: "No such job (or no report, or no such plot, for it)",
    409: "The job's state forbids it (not ended yet, already ended, not failed), or another job writes to "
         "the same result path",
    413: "The body is over ``COSMIC_COORDINATOR_MAX_BODY_BYTES``",
    422: "The request is not valid: ``detail`` names each field and why",
    502: "S3 refused or failed a call the request needed (``detail`` says which)",
    503: "S3 or Lambda gave no answer; ``detail`` names the service, its endpoint and the error",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with why and the ``{"detail": ...}`` body."""
    return {code: {"description": _WHY[code], "content": _DETAIL} for code in codes}


#: What every guarded route may answer, whatever it does.
GUARDED = (401, 403, 502, 503)
#: The report's three renderings (``?format=``).
REPORT_CONTENT: dict[int | str, dict[str, Any]] = {200: {
    "description": "The job's report: the summary (json), for people (md), or the seed-table row (csv)",
    "content": {"application/json": {"schema": {"type": "object"}},
                "text/markdown": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}}}}}
PNG_CONTENT: dict[int | str, dict[str, Any]] = {200: {
    "description": "The plot, as a PNG image", "content": {"image/png": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}}}
METRICS_CONTENT: dict[int | str, dict[str, Any]] = {200: {
    "description": "Prometheus text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}


def route(*codes: int, ok: dict[int | str, dict[str, Any]] | None = None) -> dict[int | str, dict[str, Any]]:
    """A guarded route's ``responses``: its own error ``codes``, the guarded ones, and its 200 (``ok``)."""
    return {**(ok or {}), **errors(*sorted({*codes, *GUARDED}))}
