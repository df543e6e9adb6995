"""What the C hub adds: its rules agree with protocol.py's, its build is optional, the choice of hub.

The C hub's behaviour as a server is tested by the same tests as the Python hub's (test_server.py
and test_hub.py run against both); here are the parts only C has: its own name validator and
reply encoder (compared with the Python ones on a table and on fuzzed input), the fallback when
it cannot be built, and ``COSMIC_RENDEZVOUS_HUB``.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from services.rendezvous import chub
from services.rendezvous.errors import HubUnavailable, NameRejected
from services.rendezvous.hub import Hub
from services.rendezvous.protocol import encode_address, parse_name, wire_ipv4
from tests.common import REPO


@pytest.fixture
def c_hub() -> ModuleType:
    if chub._hub is None:
        pytest.skip(f"the C hub is not built (pip install -e . with a C compiler builds it): {chub.MISSING}")
    return chub._hub


def _python_verdict(first_read: bytes) -> tuple[bytes | None, str | None]:
    try:
        return parse_name(first_read), None
    except NameRejected as rejected:
        return None, rejected.reason


NAMES = [b"", b"\0", b"\0\0\0trailing", b"a", b"n" * 99, b"n" * 100, b"n" * 101, b"n" * 150, b"n" * 4096,
         b"n" * 100 + b"\0", b"n" * 100 + b"\0" * 20, b"n" * 101 + b"\0", b"n" * 99 + b"\0x", b"abc\0padding",
         bytes(range(1, 256))[:100], bytes(range(256)), b"\xff\x01\x80", b"x\0" * 60, b"\0" * 300]


def _fuzzed(count: int, seed: int = 16) -> list[bytes]:
    """Random first reads around the edges: lengths near 100, NULs near the 100th byte, any bytes."""
    rng = random.Random(seed)
    reads = []
    for _ in range(count):
        size = rng.choice([rng.randrange(0, 8), rng.randrange(95, 106), rng.randrange(0, 400)])
        data = bytearray(rng.randbytes(size))
        for _ in range(rng.choice([0, 0, 1, 3])):  # some NULs, often where the rule turns
            if data:
                data[min(len(data) - 1, rng.choice([rng.randrange(len(data)), 99, 100, 101]))] = 0
        reads.append(bytes(data))
    return reads


@pytest.mark.parametrize("first_read", NAMES, ids=range(len(NAMES)))
def test_c_and_python_accept_and_reject_the_same_names(c_hub: ModuleType, first_read: bytes) -> None:
    assert c_hub.parse_name(first_read) == _python_verdict(first_read)


def test_c_and_python_agree_on_fuzzed_first_reads(c_hub: ModuleType) -> None:
    disagree = [data for data in _fuzzed(5000) if c_hub.parse_name(data) != _python_verdict(data)]
    assert not disagree, f"{len(disagree)} reads judged differently, e.g. {disagree[0]!r}"


def _python_reply(host: str, port: int) -> bytes | None:
    ip = wire_ipv4(host)
    return None if ip is None else encode_address(ip, port)


@pytest.mark.parametrize("host", ["127.0.0.1", "198.51.100.7", "0.0.0.0", "255.255.255.255", "::ffff:203.0.113.9",
                                  "::ffff:0:0", "::1", "::", "::127.0.0.1", "2001:db8::1", "fe80::1"])
def test_c_and_python_send_the_same_address_bytes(c_hub: ModuleType, host: str) -> None:
    for port in (0, 1, 10000, 65535):
        assert c_hub.reply_for(host, port) == _python_reply(host, port), (host, port)


def test_c_and_python_agree_on_random_peer_addresses(c_hub: ModuleType) -> None:
    rng = random.Random(16)
    for _ in range(2000):
        if rng.random() < 0.3:
            host = socket.inet_ntop(socket.AF_INET, rng.randbytes(4))
        else:  # half of them IPv4-mapped, as a dual-stack listener reports IPv4 peers
            prefix = b"\0" * 10 + b"\xff\xff" if rng.random() < 0.5 else rng.randbytes(12)
            host = socket.inet_ntop(socket.AF_INET6, prefix + rng.randbytes(4))
        port = rng.randrange(65536)
        assert c_hub.reply_for(host, port) == _python_reply(host, port), host


def test_the_setting_chooses_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    assert chub.hub_class("python") is Hub
    if chub.c_available():
        assert chub.hub_class("auto") is chub.CHub and chub.hub_class("c") is chub.CHub
    monkeypatch.setattr(chub, "_hub", None)  # as where it was not built
    monkeypatch.setattr(chub, "MISSING", "No module named 'services.rendezvous._hub'")
    assert chub.hub_class("auto") is Hub, "auto falls back to the Python hub"
    with pytest.raises(HubUnavailable, match="not built"):
        chub.hub_class("c")


@pytest.mark.integration
def test_asking_for_a_missing_c_hub_fails_clearly_at_startup() -> None:
    code = ("import sys; sys.modules['services.rendezvous._hub'] = None  # as if it was never built\n"
            "from services.rendezvous.cli import main\n"
            "raise SystemExit(main(['--hub', 'c', '--host', '127.0.0.1', '--port', '0', '--health-port', '-1']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "the C hub was asked for (hub=c) but is not built" in done.stderr


def _build(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """``setup.py build_ext`` into ``tmp_path`` (the source tree is left alone); the built modules."""
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / "temp")], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, **env}, check=False)
    return done, sorted((tmp_path / "lib").rglob("_hub*.so"))


@pytest.mark.integration
def test_a_failed_compile_leaves_the_python_hub(tmp_path: Path) -> None:
    """No compiler (CC is a program that fails): the build still succeeds, without the C hub."""
    done, built = _build(tmp_path, CC="false", LDSHARED="false")
    assert done.returncode == 0, done.stdout + done.stderr
    assert built == [], "nothing is built"
    assert 'extension "services.rendezvous._hub" failed' in done.stdout + done.stderr, "the failure is reported"


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C hub is Linux-only (epoll, accept4)")
def test_the_compiler_the_machine_has_builds_it(tmp_path: Path) -> None:
    if not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("no C compiler on this machine")
    done, built = _build(tmp_path)
    assert done.returncode == 0 and len(built) == 1, done.stdout + done.stderr


def test_a_scrape_reads_the_c_counters_once() -> None:
    """One ``/metrics`` scrape renders one instant of C's counters (it read them once per field before)."""

    class Core:  # what CMetrics reads from the C hub: counters(), here counted
        reads = 0

        def counters(self) -> dict[str, object]:
            Core.reads += 1
            return {"connections_total": 7, "pairings_total": 3, "waiters_gone_total": 1,
                    "rejected": {"source_limit": 2}, "timeouts": {"name": 1}}

    text = chub.CMetrics(Core()).render(waiters=0, open_connections=1, connection_cap=10, per_source_cap=5, hub="c")
    assert Core.reads == 1
    assert "rendezvous_pairings_total 3" in text and 'rendezvous_rejections_total{reason="source_limit"} 2' in text
