"""The Invoker against a misbehaving Lambda endpoint: a plain HTTP server of this test's own."""

from __future__ import annotations

import socket
import threading

import pytest

from services.coordinator.invoker import Invoker


@pytest.mark.integration
def test_an_answer_cut_mid_body_is_retried_as_a_dropped_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore raises for a cut body only when the payload is read (ResponseStreamingError); that read
    used to happen outside the Invoker's error handling, so the error ended the rank's thread."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    listener = socket.create_server(("127.0.0.1", 0))
    whole = b'{"status": "succeeded"}'

    def answer_twice() -> None:
        for head, body in ((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b'{"par'),
                           (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(whole), whole)):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(head + body)

    with listener:
        threading.Thread(target=answer_twice, daemon=True).start()
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{listener.getsockname()[1]}")
        invoker = Invoker("cosmic-worker", 5.0, pool_size=1, retries=2, base_delay_s=0.01)
        outcome = invoker.invoke({"rank": 1})
    assert outcome.ok and outcome.response == {"status": "succeeded"}
    assert invoker.stats.transport_errors == 1
