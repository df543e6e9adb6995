"""The coordinator's HTTP API (FastAPI): ``POST /jobs`` and everything to follow a job to its report.

Errors say what to fix: a payload problem is a 422 naming the field (pydantic's for shapes,
planning's for what only S3 can tell: no partitions under the prefix, ``file_limit`` above what
exists), a second active job on one result path a 409, an unknown job a 404. Every error of
ours is answered by one handler, with the status its class carries (:mod:`.errors`). With a token
configured every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``.
S3 or Lambda giving no answer is a 503 naming the endpoint (:class:`.errors.DependencyUnavailable`),
never a bare 500; ``/healthz`` is liveness, ``/readyz`` checks both dependencies.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services import __version__
from services.coordinator import planner
from services.coordinator import report as reports
from services.coordinator.errors import CoordinatorError, from_store_error
from services.coordinator.limits import BodyLimit, errors_with_excerpts
from services.coordinator.payload import JobRequest
from services.coordinator.planner import PlanRequest
from services.coordinator.readiness import Readiness
from services.coordinator.service import Coordinator
from services.s3store import StoreError

log = logging.getLogger("cosmic.coordinator.api")
_bearer = HTTPBearer(auto_error=False)
#: What every route that reads or writes job state may also answer (OpenAPI).
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "S3 or Lambda gave no answer; ``detail`` names the service, its endpoint and the error"}}
_MEDIA = {"json": "application/json", "md": "text/markdown; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def create_app(coordinator: Coordinator) -> FastAPI:
    settings = coordinator.settings
    app = FastAPI(title="Cosmic Rendezvous coordinator", version=__version__,
                  description="Data-parallel redshift inference over S3 partitions, fanned out to Lambda workers.")

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not settings.api_token:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(),
                                                          settings.api_token.encode()):
            raise HTTPException(401, "a bearer token is required "
                                     "(Authorization: Bearer <COSMIC_COORDINATOR_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(errors_with_excerpts(list(exc.errors())))}, 422)

    @app.exception_handler(CoordinatorError)
    @app.exception_handler(StoreError)
    async def refused(_: Request, exc: CoordinatorError | StoreError) -> JSONResponse:
        """The one place an error becomes a status: the one its class carries (an S3 failure
        becomes the coordinator's first: 503 when S3 gave no answer, else by its S3 code)."""
        error = from_store_error(exc) if isinstance(exc, StoreError) else exc
        return JSONResponse({"detail": error.detail}, error.http_status)

    @app.post("/jobs", status_code=202, dependencies=guarded, responses=_UNAVAILABLE)
    def submit(payload: JobRequest, response: Response,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> dict[str, Any]:
        """Start a job from the legacy payload (plus optional fields); answers at once with its id."""
        job_id, created, warnings = coordinator.submit(payload, idempotency_key)
        response.headers["Location"] = f"/jobs/{job_id}"
        return {"job_id": job_id, "url": f"/jobs/{job_id}", "created": created, "warnings": warnings}

    @app.get("/jobs", dependencies=guarded, responses=_UNAVAILABLE)
    def list_jobs(limit: int = 100) -> list[dict[str, Any]]:
        return coordinator.list_jobs(max(1, min(limit, 1000)))

    @app.get("/jobs/{job_id}", dependencies=guarded, responses=_UNAVAILABLE)
    def status(job_id: str) -> dict[str, Any]:
        return coordinator.status(job_id)

    @app.delete("/jobs/{job_id}", status_code=202, dependencies=guarded, responses=_UNAVAILABLE)
    def cancel(job_id: str) -> dict[str, Any]:
        """Stop scheduling and write the cancel marker (running invocations finish their partition)."""
        return coordinator.cancel(job_id)

    @app.post("/jobs/{job_id}/retry", status_code=202, dependencies=guarded, responses=_UNAVAILABLE)
    def retry(job_id: str) -> dict[str, Any]:
        """Re-run only the failed ranks of a failed job."""
        return coordinator.retry(job_id)

    @app.get("/jobs/{job_id}/report", dependencies=guarded, responses=_UNAVAILABLE)
    def report(job_id: str, format: Literal["json", "md", "csv"] = "json") -> Response:
        document = coordinator.summary(job_id)
        if format == "json":
            return JSONResponse(document)
        return PlainTextResponse(reports.render_report(document, format), media_type=_MEDIA[format])

    @app.get("/jobs/{job_id}/ranks/{rank}/logs", dependencies=guarded, responses=_UNAVAILABLE)
    def logs(job_id: str, rank: int) -> dict[str, Any]:
        """Each attempt of one rank with its invocation's log tail (Lambda's last 4 KB of it)."""
        return coordinator.logs(job_id, rank)

    @app.get("/jobs/{job_id}/plots/{name}.png", dependencies=guarded, responses=_UNAVAILABLE)
    def plot(job_id: str, name: str) -> Response:
        return Response(coordinator.plot(job_id, name), media_type="image/png")

    @app.post("/plans", dependencies=guarded, responses={200: {"content": {_MEDIA["md"]: {}}}})
    def make_plan(request: PlanRequest, format: Literal["json", "md"] = "json") -> Response:
        """Predicted time and cost for each Lambda memory size and world size; the cheapest that meets
        the deadline (or the fastest within the budget) marked, with the assumptions (:mod:`.planner`)."""
        return planner.answer(request, format)

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> PlainTextResponse:
        stats = coordinator.stats
        lines = ["# TYPE cosmic_invocations_total counter", f"cosmic_invocations_total {stats.invocations}",
                 "# TYPE cosmic_function_errors_total counter", f"cosmic_function_errors_total {stats.function_errors}",
                 "# TYPE cosmic_invoke_throttles_total counter", f"cosmic_invoke_throttles_total {stats.throttles}",
                 "# TYPE cosmic_invoke_transport_errors_total counter",
                 f"cosmic_invoke_transport_errors_total {stats.transport_errors}",
                 "# TYPE cosmic_jobs_running gauge", f"cosmic_jobs_running {coordinator.running_jobs()}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (S3 or Lambda being down is ``/readyz``'s to say)."""
        return {"status": "ok"}

    readiness = Readiness(settings.state_bucket)

    @app.get("/readyz", responses={503: {"description": "S3 or Lambda does not answer; each check says why"}})
    def readyz() -> JSONResponse:
        """Readiness: S3 and Lambda each answer a cheap call within a few seconds (per-dependency detail)."""
        ready, document = readiness.check()
        return JSONResponse(document, 200 if ready else 503)

    return app
