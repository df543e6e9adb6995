"""Input a job must never get past the API: a payload whose prefixes overlap the coordinator's own
objects (``.cosmic/``: a 422 naming the field) and a chunked body over the 64 KiB limit (a 413 as
soon as the limit is passed, with no echo of the input). Neither starts a job or writes a thing."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
import urllib.parse

from services.memory import peak_rss_kib
from tests.common import Api
from tests.faults.conftest import FaultStack


def _detail(body: dict) -> str:
    return json.dumps(body["detail"])


def test_a_payload_prefix_under_the_reserved_prefix_is_422_naming_the_field(api: Api, stack: FaultStack) -> None:
    before, state = api.call("GET", "/jobs?limit=1000")[1], stack.keys(".cosmic/")
    for field_name in ("result_path", "data_prefix", "S3_object_name"):
        for value in (".cosmic", ".cosmic/jobs/x", "/.cosmic/active/"):
            status, body = api.call("POST", "/jobs", stack.payload(**{field_name: value}))
            assert status == 422, (field_name, value, body)
            assert field_name in _detail(body) and "reserved for the coordinator" in _detail(body), (field_name, body)
    assert api.call("GET", "/jobs?limit=1000")[1] == before, "a refused payload starts no job"
    assert stack.keys(".cosmic/") == state, "and writes nothing among the coordinator's objects"
    look_alike = api.submit(stack.payload(result_path="results/.cosmic-like", world_size=1, communicator=False))
    assert api.wait(look_alike)["state"] == "succeeded", "a mere look-alike is fine"


def _send_chunked(url: str, chunk: bytes, most_chunks: int, time_limit_s: float = 30.0) -> tuple[bytes, int]:
    """POST a chunked body of up to ``most_chunks`` chunks, stopping once the server answers;
    returns the answer's bytes and how many chunks went out."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    sent, answer = 0, b""
    deadline = time.monotonic() + time_limit_s
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        while sent < most_chunks and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(frame)
            except OSError:  # the server answered and closed while we were still sending
                break
            sent += 1
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            while chunk_in := sock.recv(65536):
                answer += chunk_in
                if b"\r\n\r\n" in answer and len(answer) > 4096:
                    break
    return answer, sent


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(api: Api) -> None:
    """A body with no Content-Length was read whole (~1 GB for 200 MB) and echoed in the 422."""
    before = api.call("GET", "/jobs?limit=1000")[1]
    rss_before = peak_rss_kib(api.child.pid)
    chunk = b"[" + b"1," * 32_767 + b"1"  # 64 KiB; up to 200 MB in all
    answer, sent = _send_chunked(api.url, chunk, most_chunks=3_200)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert len(answer) < 1024, "an error quotes no more than an excerpt of the input"
    assert sent < 100, f"{sent} chunks of 64 KiB went out before the 413: the body was read on past the limit"
    assert (peak_rss_kib(api.child.pid) or 0) - (rss_before or 0) < 64 * 1024
    assert api.call("GET", "/jobs?limit=1000")[1] == before, "no job came of it"
    assert api.call("GET", "/healthz")[0] == 200, "and the coordinator still answers"
