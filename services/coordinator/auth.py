"""Who may call the API: a bearer token for programs, a session cookie for the dashboard's browser.

With ``COSMIC_COORDINATOR_API_TOKEN`` set, every guarded route needs either ``Authorization: Bearer
<token>`` or the session cookie the dashboard's login page trades the token for, once (a browser
cannot add the bearer header to a page load, an ``<img>`` or a link). The cookie is HttpOnly (page
scripts cannot read it) and SameSite=Strict (no other site's page makes the browser send it). It
holds no state on the server: an expiry and a nonce signed with a key derived from the token, so
every coordinator process with the same token accepts it, and changing the token ends every session.

Requests that change something are protected against cross-site forgery twice over: a cookie-
authenticated one must carry the session's CSRF token in ``X-CSRF-Token`` (the dashboard embeds it
in its pages; another site cannot read it), and any request that says it comes from another origin
(``Origin``, ``Sec-Fetch-Site: cross-site``) is refused with 403, token or not (:class:`SameOrigin`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "cosmic_session"
CSRF_HEADER = "X-CSRF-Token"
#: Seconds a dashboard login lasts.
SESSION_TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Sessions:
    """Issue and check the dashboard's session cookies and their CSRF tokens, for one API token."""

    def __init__(self, api_token: str, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._key = hmac.new(api_token.encode(), b"cosmic dashboard session v1", hashlib.sha256).digest()
        self.ttl_s, self.clock = ttl_s, clock

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        body = f"{int(self.clock() + self.ttl_s)}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, cookie: str | None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        body, _, signature = cookie.rpartition(".")
        expires = body.partition(".")[0]
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return False
        return expires.isdigit() and int(expires) > self.clock()

    def csrf(self, cookie: str) -> str:
        """The CSRF token of a session: derived from it, so nothing is stored."""
        return self._sign("csrf:" + cookie)

    def csrf_ok(self, cookie: str, header: str | None) -> bool:
        return bool(header) and hmac.compare_digest(str(header).encode(), self.csrf(cookie).encode())


def token_matches(given: str | None, api_token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), api_token.encode())


def cross_site(headers: dict[str, str]) -> str | None:
    """Why a request is from another site (its ``Origin`` or ``Sec-Fetch-Site`` says so), or None.

    Programs (the CLI, curl) send neither header; browsers send ``Origin`` with every POST and DELETE."""
    if headers.get("sec-fetch-site") == "cross-site":
        return "Sec-Fetch-Site says cross-site"
    origin = headers.get("origin")
    if origin is None:
        return None
    if urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        return f"Origin {origin} is not this server's"
    return None


class SameOrigin:
    """ASGI middleware: refuse, with 403, a request that changes something and comes from another site."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
            why = cross_site(headers)
            if why is not None:
                body = ('{"detail":"refused a cross-site request: ' + why.replace('"', "'") + '"}').encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
