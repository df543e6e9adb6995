"""The coordinator's HTTP API (FastAPI): ``POST /jobs`` and everything to follow a job to its report.

Errors say what to fix: a payload problem is a 422 naming the field (pydantic's for shapes,
planning's for what only S3 can tell: no partitions under the prefix, ``file_limit`` above what
exists), a second active job on one result path a 409, an unknown job a 404. Every error of
ours is answered by one handler, with the status its class carries (:mod:`.errors`). With a token
configured every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>``, or the
session cookie the dashboard trades the token for (:mod:`.auth`). The dashboard is at ``/``, the API's
docs at ``/docs``, both served whole by this process (:mod:`.dashboard`), nothing from a CDN.
S3 or Lambda giving no answer is a 503 naming the endpoint (:class:`.errors.DependencyUnavailable`),
never a bare 500; ``/healthz`` is liveness, ``/readyz`` checks both dependencies.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services import __version__
from services.coordinator import dashboard, planner, responses
from services.coordinator import report as reports
from services.coordinator.auth import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, SameOrigin, Sessions, token_matches
from services.coordinator.errors import CoordinatorError, from_store_error
from services.coordinator.limits import BodyLimit, errors_with_excerpts
from services.coordinator.payload import JobRequest
from services.coordinator.planner import PlanRequest
from services.coordinator.readiness import Readiness
from services.coordinator.service import Coordinator
from services.s3store import StoreError

log = logging.getLogger("cosmic.coordinator.api")
_bearer = HTTPBearer(auto_error=False)
_MEDIA = {"json": "application/json", "md": "text/markdown; charset=utf-8", "csv": "text/csv; charset=utf-8"}


def create_app(coordinator: Coordinator) -> FastAPI:
    settings = coordinator.settings
    app = FastAPI(title="Cosmic Rendezvous coordinator", version=__version__,
                  description="Data-parallel redshift inference over S3 partitions, fanned out to Lambda workers.",
                  docs_url=None, redoc_url=None)  # /docs is served from a package, not a CDN (.dashboard.docs)
    sessions = Sessions(settings.api_token) if settings.api_token else None

    def authorised(request: Request,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if sessions is None or token_matches(credentials.credentials if credentials else None, settings.api_token):
            return
        cookie = request.cookies.get(SESSION_COOKIE)
        if sessions.valid(cookie):
            changes = request.method not in SAFE_METHODS
            if changes and not sessions.csrf_ok(str(cookie), request.headers.get(CSRF_HEADER)):
                raise HTTPException(403, f"a dashboard session must send its {CSRF_HEADER} header to change anything")
            return
        raise HTTPException(401, "a bearer token is required (Authorization: Bearer <COSMIC_COORDINATOR_API_TOKEN>), "
                                 "or the dashboard's session cookie", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(SameOrigin)

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

    @app.post("/jobs", status_code=202, dependencies=guarded, responses=responses.route(409, 413, 422))
    def submit(payload: JobRequest, response: Response,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> dict[str, Any]:
        """Start a job from the legacy payload (plus optional fields); answers at once with its id."""
        job_id, created, warnings = coordinator.submit(payload, idempotency_key)
        response.headers["Location"] = f"/jobs/{job_id}"
        return {"job_id": job_id, "url": f"/jobs/{job_id}", "created": created, "warnings": warnings}

    @app.get("/jobs", dependencies=guarded, responses=responses.route(422))
    def list_jobs(limit: int = 100) -> list[dict[str, Any]]:
        return coordinator.list_jobs(max(1, min(limit, 1000)))

    @app.get("/jobs/{job_id}", dependencies=guarded, responses=responses.route(404))
    def status(job_id: str, ranks: bool = True) -> dict[str, Any]:
        """The job's state; ``ranks=false`` leaves out the per-rank list (``null``): for pollers of large jobs."""
        return coordinator.status(job_id, ranks=ranks)

    @app.delete("/jobs/{job_id}", status_code=202, dependencies=guarded, responses=responses.route(404, 409))
    def cancel(job_id: str) -> dict[str, Any]:
        """Stop scheduling and write the cancel marker (running invocations finish their partition)."""
        return coordinator.cancel(job_id)

    @app.post("/jobs/{job_id}/retry", status_code=202, dependencies=guarded, responses=responses.route(404, 409))
    def retry(job_id: str) -> dict[str, Any]:
        """Re-run only the failed ranks of a failed job."""
        return coordinator.retry(job_id)

    @app.get("/jobs/{job_id}/report", dependencies=guarded,
             responses=responses.route(404, 409, 422, ok=responses.REPORT_CONTENT))
    def report(job_id: str, format: Literal["json", "md", "csv"] = "json") -> Response:
        document = coordinator.summary(job_id)
        if format == "json":
            return JSONResponse(document)
        return PlainTextResponse(reports.render_report(document, format), media_type=_MEDIA[format])

    @app.get("/jobs/{job_id}/ranks/{rank}/logs", dependencies=guarded, responses=responses.route(404))
    def logs(job_id: str, rank: int) -> dict[str, Any]:
        """Each attempt of one rank with its invocation's log tail (Lambda's last 4 KB of it)."""
        return coordinator.logs(job_id, rank)

    @app.get("/jobs/{job_id}/plots/{name}.png", dependencies=guarded, response_class=Response,
             responses=responses.route(404, 409, ok=responses.PNG_CONTENT))
    def plot(job_id: str, name: str) -> Response:
        return Response(coordinator.plot(job_id, name), media_type="image/png")

    @app.post("/plans", dependencies=guarded, responses={200: {"content": {_MEDIA["md"]: {}}}})
    def make_plan(request: PlanRequest, format: Literal["json", "md"] = "json") -> Response:
        """Predicted time and cost for each Lambda memory size and world size; the cheapest that meets
        the deadline (or the fastest within the budget) marked, with the assumptions (:mod:`.planner`)."""
        return planner.answer(request, format)

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse,
             responses=responses.route(ok=responses.METRICS_CONTENT))
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

    dashboard.register(app, coordinator, guarded, sessions)
    return app
