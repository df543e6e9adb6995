"""The dashboard over HTTP (no browser: tests/browser drives one): the cookie login and its limits,
the cross-site checks, the offline ``/docs``, the schema's statuses and content types, the
list's filters. The coordinator runs in a thread against moto's S3; no job needs Lambda here."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.coordinator.auth import Sessions, cross_site
from services.coordinator.dashboard.views import Filters
from services.coordinator.errors import FilterError
from services.ports import free_port

TOKEN = "dashboard-test-token"


@dataclass
class Server:
    host: str
    port: int

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def login(self) -> str:
        status, headers, _ = self.request("POST", "/ui/session", urllib.parse.urlencode({"token": TOKEN}).encode(),
                                          {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, status
        return headers["set-cookie"]


@pytest.fixture(scope="module")
def server(s3_endpoint: str) -> Iterator[Server]:
    pytest.importorskip("fastapi")
    import uvicorn

    from services.coordinator import config
    from services.coordinator.app import create_app
    from services.coordinator.service import Coordinator
    from services.s3store import S3Store

    store = S3Store()
    store.ensure_bucket("cosmic-dashboard-state")
    coordinator = Coordinator(config.load({}, api_token=TOKEN, state_bucket="cosmic-dashboard-state"), store)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(coordinator), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.05)
    yield Server("127.0.0.1", port)
    uv.should_exit = True
    thread.join(10)


def _cookie(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0]


def test_pages_without_a_session_show_the_login_form_and_the_api_says_401(server: Server) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200 and b'id="login-form"' in body and b"job-rows" not in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert server.request("GET", "/jobs")[0] == 401
    assert server.request("GET", "/ui/jobs/rows")[0] == 401


def test_the_token_is_traded_once_for_an_httponly_samesite_strict_cookie(server: Server) -> None:
    wrong = server.request("POST", "/ui/session", b"token=nope", {"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong[0] == 401 and "set-cookie" not in wrong[1]
    set_cookie = server.login()
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/" in set_cookie
    cookie = _cookie(set_cookie)
    status, _, body = server.request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b'id="job-rows"' in body
    assert server.request("GET", "/jobs", headers={"Cookie": cookie})[0] == 200
    assert server.request("GET", "/jobs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200  # programs too
    forged = cookie.rsplit(".", 1)[0] + "." + "0" * 64
    assert server.request("GET", "/jobs", headers={"Cookie": forged})[0] == 401


def test_a_login_redirects_only_to_this_server(server: Server) -> None:
    for target, expected in [("/ui/sweep", "/ui/sweep"), ("//evil.example/x", "/"), ("https://evil.example", "/")]:
        body = urllib.parse.urlencode({"token": TOKEN, "next": target}).encode()
        status, headers, _ = server.request("POST", "/ui/session", body,
                                            {"Content-Type": "application/x-www-form-urlencoded"})
        assert (status, headers["location"]) == (303, expected)


def test_changes_from_a_session_need_its_csrf_token_and_the_same_origin(server: Server) -> None:
    cookie = _cookie(server.login())
    page = server.request("GET", "/", headers={"Cookie": cookie})[2].decode()
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
    assert csrf is not None
    no_csrf = server.request("DELETE", "/jobs/j-none", headers={"Cookie": cookie})
    assert no_csrf[0] == 403 and b"X-CSRF-Token" in no_csrf[2]
    assert server.request("DELETE", "/jobs/j-none", headers={"Cookie": cookie, "X-CSRF-Token": "0" * 64})[0] == 403
    with_csrf = {"Cookie": cookie, "X-CSRF-Token": csrf.group(1)}
    assert server.request("DELETE", "/jobs/j-none", headers=with_csrf)[0] == 404  # through to the route
    same = server.request("DELETE", "/jobs/j-none", headers={**with_csrf, "Origin": f"http://{server.host}:{server.port}"})
    assert same[0] == 404
    cross = server.request("DELETE", "/jobs/j-none", headers={**with_csrf, "Origin": "https://evil.example"})
    assert cross[0] == 403 and b"cross-site" in cross[2]
    bearer_cross = server.request("POST", "/jobs/j-none/retry",
                                  headers={"Authorization": f"Bearer {TOKEN}", "Sec-Fetch-Site": "cross-site"})
    assert bearer_cross[0] == 403


def test_docs_are_served_whole_from_the_package(server: Server) -> None:
    pytest.importorskip("fastapi_offline")
    status, headers, body = server.request("GET", "/docs")
    page = body.decode()
    assert status == 200 and "swagger-ui-bundle.js" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the docs page loads something from elsewhere"
    for asset in re.findall(r"(?:src|href)=\"(/[^\"]+)\"", page):
        assert server.request("GET", asset)[0] == 200, asset
    assert "connect-src 'self'" in headers["content-security-policy"]


def test_the_schema_declares_every_status_and_content_type(server: Server) -> None:
    schema = json.loads(server.request("GET", "/openapi.json")[2])
    paths = schema["paths"]
    report = paths["/jobs/{job_id}/report"]["get"]["responses"]
    assert set(report["200"]["content"]) == {"application/json", "text/markdown", "text/csv"}
    assert set(paths["/jobs/{job_id}/plots/{name}.png"]["get"]["responses"]["200"]["content"]) == {"image/png"}
    assert {"401", "403", "409", "413", "422", "503"} <= set(paths["/jobs"]["post"]["responses"])
    assert {"404", "409"} <= set(paths["/jobs/{job_id}"]["delete"]["responses"])
    assert {"404", "409"} <= set(paths["/jobs/{job_id}/retry"]["post"]["responses"])
    assert "404" in paths["/jobs/{job_id}"]["get"]["responses"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")], "pages are not the API"


def test_static_assets_name_nothing_outside_this_server(server: Server) -> None:
    cookie = _cookie(server.login())
    page = server.request("GET", "/", headers={"Cookie": cookie})[2].decode()
    assets = re.findall(r"(?:src|href)=\"(/ui/static/[^\"]+)\"", page)
    assert len(assets) >= 3
    for asset in [*assets, "/ui/static/docs.js"]:
        status, _, body = server.request("GET", asset)
        assert status == 200
        body = body.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")  # a namespace's name, never fetched
        assert not re.search(rb"https?://", body), f"{asset} names an outside URL"


def test_the_list_rejects_a_bad_filter_with_the_reason(server: Server) -> None:
    cookie = _cookie(server.login())
    status, _, body = server.request("GET", "/?world_size=two", headers={"Cookie": cookie})
    assert status == 400 and b"world size must be a whole number" in body


@pytest.mark.unit
def test_filters_keep_what_they_say() -> None:
    row: dict[str, Any] = {"state": "succeeded", "world_size": 4, "partitions": 8, "samples": 1000,
                           "wall_time_s": 20.0, "cost": 0.01, "submitted_at": 1_800_000_000.0}
    assert Filters.parse({"state": "", "world_size": ""}).keep(row)
    assert Filters.parse({"state": "succeeded", "world_size": "4", "partitions": "8"}).keep(row)
    assert not Filters.parse({"world_size": "2"}).keep(row)
    assert not Filters.parse({"min_samples": "1001"}).keep(row)
    assert not Filters.parse({"max_wall_s": "19.5"}).keep(row)
    assert not Filters.parse({"max_cost": "0.001"}).keep(row)
    assert Filters.parse({"since": "2027-01-15"}).keep(row)
    assert not Filters.parse({"since": "2027-01-16"}).keep(row)
    for bad in ({"state": "sleeping"}, {"partitions": "-1"}, {"max_cost": "cheap"}, {"since": "yesterday"}):
        with pytest.raises(FilterError):
            Filters.parse(bad)


@pytest.mark.unit
def test_sessions_expire_and_are_bound_to_the_token() -> None:
    now = [1000.0]
    sessions = Sessions("t1", ttl_s=60, clock=lambda: now[0])
    cookie = sessions.issue()
    assert sessions.valid(cookie) and not Sessions("t2").valid(cookie)
    assert sessions.csrf_ok(cookie, sessions.csrf(cookie)) and not sessions.csrf_ok(cookie, "ü")
    now[0] += 61
    assert not sessions.valid(cookie)
    assert cross_site({"host": "a:1", "origin": "http://a:1"}) is None
    assert cross_site({"host": "a:1", "origin": "null"}) is not None
    assert cross_site({"host": "a:1"}) is None


@pytest.mark.unit
def test_reports_render_as_html_with_their_markup_escaped_and_headings_shifted() -> None:
    from services.coordinator.dashboard.views import markdown

    html = markdown("# Job j\n\n| a | b |\n|---|---|\n| 1 | <script>x</script> |\n", shift=2)
    assert "<h3>Job j</h3>" in html and "<table>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.unit
def test_no_browser_here_is_said_not_crashed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Chromium or its driver is missing, the browser tests skip and the demo goes on, saying which."""
    pytest.importorskip("selenium")
    from services.client import screenshots
    from services.client.errors import BrowserUnavailable

    monkeypatch.setattr(screenshots.shutil, "which", lambda path: None if path.endswith("chromedriver") else path)
    with pytest.raises(BrowserUnavailable, match="/usr/bin/chromedriver is missing"):
        screenshots.browser()


def test_a_job_whose_attempts_never_reported_still_has_a_timeline_not_a_500(start_coordinator: Any,
                                                                              stack: Any) -> None:
    """A job whose every attempt failed before Lambda reported (here: no such function) ends with a
    summary that bills nothing; the timeline still draws the failed attempt from the coordinator's
    own times (it was a 500)."""
    api = start_coordinator()
    status, body = api.call("POST", "/jobs", stack.payload(function="no-such-function", max_attempts=1))
    if status != 202:
        pytest.skip(f"this runtime refuses the unknown function at submission ({status}): nothing to draw")
    final = api.wait(body["job_id"])
    assert final["state"] == "failed", final
    status, image = api.call("GET", f"/jobs/{body['job_id']}/plots/timeline.png")
    assert status == 200 and image.startswith(b"\x89PNG"), status
