"""``cosmic report JOB_ID``: a finished job's report (md, csv or json), or every report file and plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services import argtypes
from services.client.api import ApiClient
from services.client.commands import REPORT_FORMATS, handles_errors, write_report_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", type=argtypes.job_id, help="the job's id (`cosmic status` lists them)")
    parser.add_argument("--format", choices=REPORT_FORMATS, default="md", help="what to print (default md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write report.md, report.csv, report.json and the plots (PNG) into this folder")


@handles_errors("report")
def run(args: argparse.Namespace) -> int:
    client = ApiClient()
    if args.out is not None:
        for path in write_report_files(client, args.job_id, args.out):
            print(path)
        return 0
    body = client.report(args.job_id, args.format)
    print(json.dumps(body, indent=2) if args.format == "json" else body.rstrip("\n"))
    return 0
