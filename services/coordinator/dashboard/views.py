"""What the dashboard's pages show, computed from the coordinator: the job list with its filters,
and the sweep table across jobs. No HTML here (templates do that), only rows and their checks.

A finished job's samples, wall time and cost come from its summary in S3; a summary never changes
once its job ended, so each is read once and kept (:class:`Summaries`), keyed by the job and when
it finished (a retried job finishes again, and is read again).
"""

from __future__ import annotations

import calendar
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt

from services.contracts import TERMINAL_JOB_STATES, JobState
from services.coordinator import report
from services.coordinator.errors import CoordinatorError, FilterError
from services.coordinator.service import Coordinator
from services.logs import event as log_event
from services.s3store import StoreError

log = logging.getLogger("cosmic.coordinator.dashboard")
#: Jobs the list reads (the newest first).
LIST_LIMIT = 200
#: Summaries kept in memory.
CACHED_SUMMARIES = 512
#: Markdown as the reports are written, HTML in them shown as text (a job's error is not markup).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


@dataclass(frozen=True)
class Filters:
    """The job list's filters, each None when not set (the form sends empty fields as "")."""

    state: str | None = None
    world_size: int | None = None
    partitions: int | None = None
    min_samples: int | None = None
    max_wall_s: float | None = None
    max_cost: float | None = None
    since: str | None = None  # YYYY-MM-DD (UTC), submitted on or after

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        state = query.get("state") or None
        if state is not None and state not in {s.value for s in JobState}:
            raise FilterError(f"state must be one of {', '.join(s.value for s in JobState)}, got {state!r}")
        since = query.get("since") or None
        if since is not None:
            try:
                time.strptime(since, "%Y-%m-%d")
            except ValueError:
                raise FilterError(f"submitted since must be a date (YYYY-MM-DD), got {since!r}") from None
        return cls(state=state, world_size=_number(query, "world_size", int, "world size"),
                   partitions=_number(query, "partitions", int, "partitions"),
                   min_samples=_number(query, "min_samples", int, "samples at least"),
                   max_wall_s=_number(query, "max_wall_s", float, "wall time at most"),
                   max_cost=_number(query, "max_cost", float, "cost at most"), since=since)

    def keep(self, row: dict[str, Any]) -> bool:
        checks = [
            self.state is None or row["state"] == self.state,
            self.world_size is None or row.get("world_size") == self.world_size,
            self.partitions is None or row.get("partitions") == self.partitions,
            self.min_samples is None or (row.get("samples") or 0) >= self.min_samples,
            self.max_wall_s is None or (row.get("wall_time_s") is not None and row["wall_time_s"] <= self.max_wall_s),
            self.max_cost is None or (row.get("cost") is not None and row["cost"] <= self.max_cost),
            self.since is None or (row.get("submitted_at") or 0) >= calendar.timegm(time.strptime(self.since,
                                                                                                  "%Y-%m-%d")),
        ]
        return all(checks)


def _number(query: dict[str, str], name: str, kind: type[int] | type[float], label: str) -> Any:
    text = (query.get(name) or "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise FilterError(f"{label} must be a {'whole ' if kind is int else ''}number, got {text!r}") from None
    if value < 0:
        raise FilterError(f"{label} must not be negative, got {text}")
    return value


class Summaries:
    """Finished jobs' summaries, read once each."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._kept: OrderedDict[tuple[str, float], dict[str, Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, finished_at: float | None) -> dict[str, Any] | None:
        key = (job_id, finished_at or 0.0)
        with self._lock:
            if key in self._kept:
                return self._kept[key]
        try:
            summary: dict[str, Any] | None = self.coordinator.summary(job_id)
        except CoordinatorError:
            summary = None  # no summary (the job recorded why): the row shows dashes
        except StoreError as exc:
            log_event(log, "summary_unread", logging.WARNING, job_id=job_id, error=str(exc)[:200])
            return None  # not kept: S3 may answer next time
        with self._lock:
            self._kept[key] = summary
            while len(self._kept) > CACHED_SUMMARIES:
                self._kept.popitem(last=False)
        return summary


def job_rows(coordinator: Coordinator, summaries: Summaries, filters: Filters) -> list[dict[str, Any]]:
    """The list's rows, newest first: what ``GET /jobs`` says, plus samples, wall time and cost from
    each finished job's summary, or the samples so far and time since submission of a live one."""
    rows = []
    for job in coordinator.list_jobs(LIST_LIMIT):
        row = dict(job, samples=None, wall_time_s=None, cost=None)
        if job["state"] in TERMINAL_JOB_STATES and job.get("summary_key"):
            summary = summaries.get(job["job_id"], job.get("finished_at"))
            if summary is not None:
                row.update(samples=summary.get("samples"), wall_time_s=summary.get("wall_time_s"),
                           cost=(summary.get("cost") or {}).get("total"))
        elif job["state"] not in TERMINAL_JOB_STATES and "result_path" in job:
            row["wall_time_s"] = time.time() - job["submitted_at"]
            row["samples"] = _samples_so_far(coordinator, job["job_id"])
        if filters.keep(row):
            rows.append(row)
    return rows


def _samples_so_far(coordinator: Coordinator, job_id: str) -> int | None:
    """A live job's samples done, from its ranks' progress (one listing a second at most per job)."""
    try:
        return int(coordinator.status(job_id).get("progress", {}).get("samples_done") or 0)
    except (CoordinatorError, StoreError):
        return None


def sweep(coordinator: Coordinator, summaries: Summaries, job_ids: list[str]) -> tuple[list[dict[str, Any]], str]:
    """The seed-style table across ``job_ids`` (every finished job with a summary when empty):
    its rows, sorted by partition size and world size, and the table as HTML."""
    finished = {job["job_id"]: job.get("finished_at") for job in coordinator.list_jobs(LIST_LIMIT)
                if job["state"] in TERMINAL_JOB_STATES and job.get("summary_key")}
    rows = []
    for job_id in job_ids or list(finished):
        summary = summaries.get(job_id, finished[job_id]) if job_id in finished else _summary(coordinator, job_id)
        if summary is not None:
            rows.append(report.seed_table_row(summary))
    rows.sort(key=lambda row: (str(row.get("partition")), row.get("world_size") or 0))
    return rows, markdown(report.render_table(rows, "md")) if rows else ""


def _summary(coordinator: Coordinator, job_id: str) -> dict[str, Any] | None:
    try:
        return coordinator.summary(job_id)
    except CoordinatorError:
        return None


def markdown(text: str, shift: int = 0) -> str:
    """Report markdown as HTML (tables included; any HTML in it escaped); headings ``shift`` levels
    down (a report inside a page must not bring a second ``<h1>``)."""
    html = str(_MARKDOWN.render(text))
    if shift:
        html = re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m[1]}h{min(int(m[2]) + shift, 6)}>", html)
    return html
