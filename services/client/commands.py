"""What the ``cosmic`` job commands share: error handling, payloads, report files, and the sweep.

The commands themselves are small modules (``submit``, ``status``, ``cancel``, ``retry``, ``logs``,
``report``, ``sweep``), each with ``add_arguments``/``run`` as :mod:`services.cli` expects. They talk to
the coordinator through :class:`~services.client.api.ApiClient` only, so they work the
same against ``cosmic serve --embedded`` on this machine and a coordinator deployed elsewhere;
``cosmic demo`` reuses :func:`sweep`. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.client.api import ApiClient, ApiError
from services.client.errors import CliError, CommandError

#: The base payload of ``cosmic sweep`` when none is given: the legacy payload, on the demo data.
EXAMPLE_PAYLOAD = Path(__file__).resolve().parents[2] / "examples" / "payload.json"
PLOT_NAMES = ("predicted_vs_true", "duration_cost", "timeline")
#: Where a sweep's jobs write, in the payload's data bucket: under ``result``, the prefix the
#: worker role may write on AWS (infra/worker.yaml's ResultsPrefix), as ``results/`` is.
SWEEP_RESULTS = "results/sweep"
REPORT_FORMATS = ("md", "csv", "json")


def handles_errors(name: str) -> Callable[[Callable[[Any], int]], Callable[[Any], int]]:
    """Turn the client's errors into one readable line on stderr and an exit code, not a traceback."""

    def wrap(run: Callable[[Any], int]) -> Callable[[Any], int]:
        @functools.wraps(run)
        def guarded(args: Any) -> int:
            try:
                return run(args)
            except CommandError as exc:
                print(f"cosmic {name}: {exc}", file=sys.stderr)
                return 2
            except CliError as exc:  # the API's refusals, an unreachable coordinator, a wait that gave up
                print(f"cosmic {name}: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(f"\ncosmic {name}: interrupted (submitted jobs keep running; `cosmic status`)", file=sys.stderr)
                return 130

        return guarded

    return wrap


def load_payload(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise CommandError(f"cannot read the payload {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CommandError(f"{path} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CommandError(f"{path} must hold a JSON object (the job payload)")
    return document


def write_report_files(client: ApiClient, job_id: str, out: Path, plot_names: tuple[str, ...] = PLOT_NAMES,
                       prefix: str = "") -> list[Path]:
    """``report.{md,csv,json}`` and the job's plots under ``out``; a plot the job cannot have is skipped."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in REPORT_FORMATS:
        body = client.report(job_id, fmt)
        path = out / f"{prefix}report.{fmt}"
        path.write_text(json.dumps(body, indent=2) + "\n" if fmt == "json" else body)
        written.append(path)
    for name in plot_names:
        try:
            image = client.plot(job_id, name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            print(f"  (no {name} plot: {exc.detail})", file=sys.stderr)
            continue
        path = out / f"{prefix}{name}.png"
        path.write_bytes(image)
        written.append(path)
    return written


# -- the sweep -----------------------------------------------------------------------------------
@dataclass
class Cell:
    """One job of the grid and how it ended."""

    partition_mb: int
    world_size: int
    job_id: str | None = None
    state: str = "not submitted"
    summary: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class SweepResult:
    cells: list[Cell]
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""
    paths: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cells) and all(cell.state == "succeeded" and cell.summary for cell in self.cells)


def sweep(client: ApiClient, base: dict[str, Any], partition_mb: list[int], world_sizes: list[int], out: Path,
          file_limit: int | None = None, progress: bool = True, say: Callable[[str], None] = print) -> SweepResult:
    """One job per (partition size, world size), one after the other so they do not compete for cores.

    Each job reads ``{mb}MB/`` (all its partitions unless ``file_limit``) and writes under
    ``results/sweep/{mb}MB/ws{n}`` (:data:`SWEEP_RESULTS`). Writes ``sweep.md``, ``sweep.csv`` (the
    seed table), each job's JSON report under ``jobs/`` and ``duration_cost.png`` into ``out``.
    """
    cells = [Cell(mb, n) for mb in partition_mb for n in world_sizes]
    limit = str(file_limit) if file_limit else "all"  # the coordinator counts what is there
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    result = SweepResult(cells)
    for index, cell in enumerate(cells, start=1):
        payload = {**base, "data_prefix": f"{cell.partition_mb}MB", "file_limit": limit,
                   "result_path": f"{SWEEP_RESULTS}/{cell.partition_mb}MB/ws{cell.world_size}",
                   "world_size": cell.world_size}
        say(f"  job {index}/{len(cells)}: {limit} partitions of {cell.partition_mb}MB "
            f"on {cell.world_size} rank{'s' if cell.world_size > 1 else ''}")
        _run_cell(client, cell, payload, progress)
        if cell.summary is not None:
            path = out / "jobs" / f"{cell.partition_mb}MB-ws{cell.world_size}.json"
            path.write_text(json.dumps(cell.summary, indent=2) + "\n")
            result.paths.append(path)
        if cell.state != "succeeded":
            say(f"  job {cell.job_id or '-'} {cell.state}: {cell.error or 'see `cosmic status`'}")
    result.rows = [{**_seed_row(cell.summary), "partitions": cell.summary.get("partitions"),
                    "cold_starts": cell.summary["invocations"].get("cold_starts")}
                   for cell in cells if cell.summary is not None]
    if result.rows:
        result.table = _write_table(result, out)
    return result


def _run_cell(client: ApiClient, cell: Cell, payload: dict[str, Any], progress: bool) -> None:
    """Submit, wait and fetch the report of one job; an API error fails this cell, not the sweep."""
    try:
        cell.job_id = client.submit(payload)["job_id"]
        status = client.wait(cell.job_id, progress=progress)
        cell.state, cell.error = status["state"], status.get("error") or _first_failure(status)
        cell.summary = client.report(cell.job_id, "json")
    except ApiError as exc:
        if cell.state == "not submitted":
            cell.state = "failed"  # refused at submission (a 422 names the field)
        cell.error = f"{cell.error}; {exc}" if cell.error else str(exc)


def _first_failure(status: dict[str, Any]) -> str | None:
    failed = status.get("failed_ranks") or {}
    return next((f"rank {rank}: {error}" for rank, error in failed.items()), None)


def _seed_row(summary: dict[str, Any]) -> dict[str, Any]:
    from services.coordinator.report import seed_table_row

    return seed_table_row(summary)


def _write_table(result: SweepResult, out: Path) -> str:
    from services.coordinator.plots import duration_and_cost_vs_world_size, to_png
    from services.coordinator.report import render_table

    for name, fmt in (("sweep.md", "md"), ("sweep.csv", "csv")):
        path = out / name
        path.write_text(render_table(result.rows, fmt))
        result.paths.append(path)
    plot = out / "duration_cost.png"
    plot.write_bytes(to_png(duration_and_cost_vs_world_size(result.rows)))
    result.paths.append(plot)
    return render_table(result.rows, "text")
