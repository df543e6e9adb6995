"""A small client of the coordinator's API, for the ``cosmic`` commands: standard library only.

``cosmic submit`` and friends run where only the base install may be (a laptop talking to a
deployed coordinator), so this uses ``urllib`` and nothing else. Every call has a timeout, and
every failure is an :class:`ApiError` whose message says what to do (or, from :meth:`ApiClient.wait`,
a :class:`JobTimeout`; the tree is drawn in :mod:`services.client.errors`).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from services import envconfig
from services.client.errors import ApiError, CoordinatorUnreachable, JobTimeout

#: Where the coordinator listens unless ``COSMIC_COORDINATOR_URL`` says otherwise (its own default address).
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds per request; long jobs are followed by polling, never by one long request.
REQUEST_TIMEOUT = 30.0
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
HINT = "is the coordinator running? `cosmic serve --embedded`"


@dataclass(frozen=True)
class ClientSettings:
    """The coordinator as its clients reach it: ``COSMIC_COORDINATOR_<FIELD>``, the coordinator's own prefix,
    so that one ``COSMIC_COORDINATOR_API_TOKEN`` serves a coordinator and the commands run beside it."""

    ENV_PREFIX: ClassVar[str] = "COSMIC_COORDINATOR_"
    ENV_ALIASES: ClassVar[Mapping[str, str]] = {"api_token": "COSMIC_API_TOKEN"}

    #: The coordinator's base URL.
    url: str = DEFAULT_URL
    #: The bearer token its API requires (its ``api_token`` setting, services/coordinator/config.py).
    api_token: str = ""


def settings() -> tuple[str, str]:
    """``(url, token)`` from ``COSMIC_COORDINATOR_URL`` (default :data:`DEFAULT_URL`) and
    ``COSMIC_COORDINATOR_API_TOKEN`` (formerly ``COSMIC_API_TOKEN``)."""
    loaded = envconfig.load(ClientSettings)
    return loaded.url, loaded.api_token


class ApiClient:
    """The coordinator's routes as methods; arguments win over the environment (see :func:`settings`)."""

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 timeout: float = REQUEST_TIMEOUT) -> None:
        url, env_token = settings()
        self.base_url = (base_url or url).rstrip("/")
        self.token = env_token if token is None else token
        self.timeout = timeout

    # -- routes -------------------------------------------------------------------------------
    def submit(self, payload: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return dict(self._json("POST", "/jobs", payload, headers))

    def status(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/jobs/{_segment(job_id)}"))

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/jobs?limit={int(limit)}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("DELETE", f"/jobs/{_segment(job_id)}"))

    def retry(self, job_id: str) -> dict[str, Any]:
        """Re-run the failed ranks of a failed job; its status after the request."""
        return dict(self._json("POST", f"/jobs/{_segment(job_id)}/retry"))

    def logs(self, job_id: str, rank: int) -> dict[str, Any]:
        """One rank's attempts, each with the log tail Lambda returned for it."""
        return dict(self._json("GET", f"/jobs/{_segment(job_id)}/ranks/{int(rank)}/logs"))

    def report(self, job_id: str, fmt: str = "json") -> Any:
        """The JSON summary as a dict for ``json``; the text for ``md`` and ``csv``."""
        raw = self._request("GET", f"/jobs/{_segment(job_id)}/report?format={urllib.parse.quote(fmt)}")
        return json.loads(raw) if fmt == "json" else raw.decode()

    def plan(self, body: dict[str, Any], fmt: str = "json") -> Any:
        """``POST /plans``: the plan as a dict for ``json``, its markdown for ``md``."""
        raw = self._request("POST", f"/plans?format={urllib.parse.quote(fmt)}", body)
        return json.loads(raw) if fmt == "json" else raw.decode()

    def plot(self, job_id: str, name: str) -> bytes:
        return self._request("GET", f"/jobs/{_segment(job_id)}/plots/{_segment(name)}.png")

    def healthy(self) -> bool:
        try:
            return self._json("GET", "/healthz").get("status") == "ok"
        except ApiError:
            return False

    def wait(self, job_id: str, progress: bool = True, timeout: float | None = None, interval: float = 0.5,
             stream: IO[str] | None = None) -> dict[str, Any]:
        """Poll until the job ends; returns its last status. Draws a progress line on ``stream`` (stderr)."""
        bar = Progress(job_id, stream or sys.stderr) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if bar is not None:
                bar.update(status)
            if status["state"] in TERMINAL:
                if bar is not None:
                    bar.close(status)
                return status
            if deadline is not None and time.monotonic() > deadline:
                if bar is not None:
                    bar.close(status)
                raise JobTimeout(f"job {job_id} still {status['state']} after {timeout:.0f} s (it keeps running)",
                                 job_id=job_id, state=status["state"])
            time.sleep(interval)

    # -- transport ----------------------------------------------------------------------------
    def _json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        return json.loads(self._request(method, path, body, headers) or b"null")

    def _request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise _api_error(method, path, exc.code, exc.read()) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CoordinatorUnreachable(f"cannot reach the coordinator at {self.base_url} ({reason}); {HINT}",
                                         url=self.base_url) from None


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _api_error(method: str, path: str, status: int, raw: bytes) -> ApiError:
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        detail = raw.decode(errors="replace").strip()[:500] or None
    return ApiError(f"{method} {path.split('?')[0]}: HTTP {status}: {describe(detail)}", status, detail)


def describe(detail: Any) -> str:
    """The API's ``detail`` as one line: pydantic's list of field errors as ``field: message; ...``."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "no detail" if detail is None else str(detail)


class Progress:
    """One line: ``job <id> [#####.....] 96/192 samples, 25.2/s, ETA 4 s; 2/4 ranks done  running  12.3 s``.

    The bar counts samples once the workers report them (``progress`` in ``GET /jobs/{id}``), and
    ranks done until then (or from a coordinator without progress).

    On a terminal it is redrawn in place; into a file or a pipe it is printed every
    :attr:`every` seconds and when the state changes, so that logs stay readable.
    """

    every = 5.0
    width = 24

    def __init__(self, job_id: str, stream: IO[str]) -> None:
        self.job_id, self.stream = job_id, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_print = -self.every
        self._last_state: str | None = None

    def line(self, status: dict[str, Any]) -> str:
        world = max(int(status.get("world_size") or 0), 1)
        counts = status.get("ranks_by_state") or {}
        done = sum(int(counts.get(state, 0)) for state in TERMINAL)
        failed = f", {counts['failed']} failed" if counts.get("failed") else ""
        ranks = f"{done}/{world} ranks done{failed}"
        progress = status.get("progress") or {}
        expected = progress.get("samples_expected")
        if expected:
            samples = int(progress.get("samples_done") or 0)
            filled = min(self.width * samples // expected, self.width)
            rate, eta = progress.get("samples_per_s"), progress.get("eta_s")
            counted = f"{samples:,}/{expected:,} samples" + (f", {rate:,.1f}/s" if rate else "") \
                + (f", ETA {eta:.0f} s" if eta is not None and status.get("state") not in TERMINAL else "")
            ranks = f"{counted}; {ranks}"
        else:
            filled = self.width * done // world
        return (f"job {self.job_id} [{'#' * filled}{'.' * (self.width - filled)}] {ranks}"
                f"  {status.get('state', '?')}  {time.monotonic() - self.started:.1f} s")

    def update(self, status: dict[str, Any]) -> None:
        text = self.line(status)
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            return
        now = time.monotonic()
        if status.get("state") != self._last_state or now - self._last_print >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print, self._last_state = now, status.get("state")

    def close(self, status: dict[str, Any]) -> None:
        """End the line (a terminal's cursor stays after the bar otherwise)."""
        if self.tty:
            self.stream.write("\r\033[K" + self.line(status) + "\n")
        elif status.get("state") != self._last_state:
            self.stream.write(self.line(status) + "\n")
        self.stream.flush()
