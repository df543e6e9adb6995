"""The dashboard's routes: pages, the list's rows for live refresh, a job's report as HTML, the
sweep's plot, and the login that trades the API token for a session cookie (:mod:`..auth`).

Pages are not part of the API's schema. A page asked for without a session (when a token is
configured) answers 200 with the login form in its place, so a URL printed by ``cosmic demo``
always opens; the form posts the token once and the browser keeps only the HttpOnly cookie. A
login link may carry the token in its fragment (``/#token=...``): fragments never reach a server
or its logs, and the page's script posts it and wipes it from the address bar.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services import __version__
from services.contracts import JobState
from services.coordinator import plots
from services.coordinator.auth import SESSION_COOKIE, Sessions, token_matches
from services.coordinator.dashboard import docs, views
from services.coordinator.errors import CoordinatorError, FilterError, JobNotFound
from services.coordinator.report import render_report
from services.coordinator.service import Coordinator

HERE = Path(__file__).resolve().parent
STATIC = "/ui/static"
#: Scripts and styles only from this server, no inline script, no framing, forms only to here; images
#: also from ``blob:``, the plots the job page fetches itself (so that it can abort them: dashboard.js).
POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; "
          "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}
MAX_LOGIN_BYTES = 4096


def register(app: FastAPI, coordinator: Coordinator, guarded: Sequence[Any], sessions: Sessions | None) -> None:
    """Add the dashboard's routes and files to ``app`` (``guarded``: the API's auth dependency)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    env.filters["seconds"] = lambda value: "-" if value is None else f"{value:.1f} s"
    env.filters["dollars"] = lambda value: "-" if value is None else f"${value:.6f}".rstrip("0").rstrip(".")
    summaries = views.Summaries(coordinator)
    token = coordinator.settings.api_token
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="dashboard-static")
    docs.register(app, env.get_template("docs.html").render(static=docs.DOCS_STATIC, version=__version__))

    def csrf(request: Request) -> str | None:
        """The page's CSRF token when the request may see pages ("" with no token configured), else None."""
        if sessions is None:
            return ""
        cookie = request.cookies.get(SESSION_COOKIE)
        if sessions.valid(cookie):
            return sessions.csrf(str(cookie))
        bearer = request.headers.get("authorization", "")
        return "" if bearer.startswith("Bearer ") and token_matches(bearer[7:], token) else None

    def page(name: str, request: Request, code: int = 200, **context: Any) -> HTMLResponse:
        secret = csrf(request)
        if secret is None:
            name, code = "login.html", 200
            context = {"error": None, "next": _local(str(request.url.path) + _query(request))}
        body = env.get_template(name).render(static=STATIC, csrf=secret or "", signed_in=bool(secret),
                                             version=__version__, job_states=[s.value for s in JobState],
                                             **context)
        return HTMLResponse(body, code, headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def jobs(request: Request) -> HTMLResponse:
        query = dict(request.query_params)
        try:
            filters, error = views.Filters.parse(query), None
        except FilterError as exc:
            filters, error = views.Filters(), str(exc)
        rows = views.job_rows(coordinator, summaries, filters) if csrf(request) is not None else []
        return page("jobs.html", request, 400 if error else 200, rows=rows, query=query, error=error)

    @app.get("/ui/jobs/rows", include_in_schema=False, dependencies=guarded)
    def rows(request: Request) -> HTMLResponse:
        try:
            filters = views.Filters.parse(dict(request.query_params))
        except FilterError as exc:
            return HTMLResponse(str(exc), 400, headers=HEADERS)
        body = env.get_template("rows.html").render(rows=views.job_rows(coordinator, summaries, filters))
        return HTMLResponse(body, headers=HEADERS)

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    def job(job_id: str, request: Request) -> HTMLResponse:
        if csrf(request) is None:
            return page("job.html", request)
        try:
            status = coordinator.status(job_id)
        except JobNotFound as exc:
            return page("missing.html", request, 404, message=str(exc))
        return page("job.html", request, status=jsonable_encoder(status), job_id=job_id)

    @app.get("/ui/jobs/{job_id}/results", include_in_schema=False, dependencies=guarded)
    def results(job_id: str) -> HTMLResponse:
        """A finished job's plots and report, as a fragment of its page; a job without a report gets
        the reason (a 200: the page shows it, a failed fetch would only be an error in the console)."""
        try:
            summary, reason = coordinator.summary(job_id), None
        except CoordinatorError as exc:
            summary, reason = None, str(exc)
        report = views.markdown(render_report(summary, "md"), shift=2) if summary else ""
        body = env.get_template("results.html").render(job_id=job_id, reason=reason, report=report,
                                                       labelled=bool(summary and summary.get("accuracy")),
                                                       attempts=(summary or {}).get("invocations", {}).get("attempts"))
        return HTMLResponse(body, headers=HEADERS)

    @app.get("/ui/sweep", include_in_schema=False)
    def sweep(request: Request) -> HTMLResponse:
        selected = _job_ids(request)
        rows, table = views.sweep(coordinator, summaries, selected) if csrf(request) is not None else ([], "")
        return page("sweep.html", request, rows=rows, table=table, selected=selected,
                    plot_query=urllib.parse.urlencode([("jobs", job_id) for job_id in selected]))

    @app.get("/ui/sweep/plot.png", include_in_schema=False, dependencies=guarded)
    def sweep_plot(request: Request) -> Response:
        rows, _ = views.sweep(coordinator, summaries, _job_ids(request))
        if not rows:
            return Response(status_code=404)
        return Response(plots.to_png(plots.duration_and_cost_vs_world_size(rows)), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.post("/ui/session", include_in_schema=False)
    async def login(request: Request) -> Response:
        raw = await request.body()
        form = urllib.parse.parse_qs(raw[:MAX_LOGIN_BYTES].decode(errors="replace"))
        given, target = (form.get("token") or [""])[0], _local((form.get("next") or ["/"])[0])
        if sessions is None:
            return RedirectResponse(target, 303)
        if not token_matches(given, token):
            body = env.get_template("login.html").render(static=STATIC, csrf="", signed_in=False, version=__version__,
                                                         error="That is not the coordinator's token.", next=target)
            return HTMLResponse(body, 401, headers=HEADERS)
        response = RedirectResponse(target, 303)
        response.set_cookie(SESSION_COOKIE, sessions.issue(), max_age=int(sessions.ttl_s), path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @app.post("/ui/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/", 303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _job_ids(request: Request) -> list[str]:
    ids = [value for part in request.query_params.getlist("jobs") for value in part.split(",") if value.strip()]
    return [value.strip() for value in ids][:100]


def _local(target: str) -> str:
    """A redirect target on this server only (``/path``), never ``//elsewhere`` or ``https://...``."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _when(stamp: float | None) -> str:
    return "-" if not stamp else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
