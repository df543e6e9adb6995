"""moto's server whose S3 state outlives a restart: what a real S3 that went away and came back looks like.

moto keeps its state in memory, so a stopped server comes back empty. This one records every
request with moto's own recorder (``MOTO_RECORDER_FILEPATH``) and, when it starts, replays the
recording in-process before it listens: the first request it answers after a restart already
sees every bucket and object it held. Test harness only.

    MOTO_RECORDER_FILEPATH=/tmp/s3.rec python -m tests.faults.moto_restartable -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from pathlib import Path

from moto.moto_api import recorder
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import main
from werkzeug.test import Client


def replay(path: Path) -> int:
    """Apply every recorded request to this process's moto backends; returns how many."""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    recorder.stop_recording()  # replayed requests are in the file already
    client = Client(DomainDispatcherApplication(create_backend_app))
    for entry in entries:
        url = urllib.parse.urlsplit(entry["url"])
        body = entry.get("body") or b""
        if entry.get("body_encoded"):
            body = base64.b64decode(body)
        headers = {name: value for name, value in entry["headers"].items()
                   if name.lower() not in ("content-length", "transfer-encoding")}
        client.open(url.path, base_url=f"{url.scheme}://{url.netloc}", method=entry["method"],
                    query_string=url.query, headers=headers, data=body)
    recorder.start_recording()
    return len(entries)


if __name__ == "__main__":
    replay(Path(os.environ["MOTO_RECORDER_FILEPATH"]))
    main()
