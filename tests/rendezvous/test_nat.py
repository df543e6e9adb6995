"""``pair()`` through two real NATs: network namespaces, nftables masquerade, the real server.

Topology (built per test, torn down always; only documentation address ranges, nothing routes
out of these namespaces)::

    host a 203.0.113.2/25 --- 203.0.113.1 [nat a] 198.51.100.1 ---+
                                                                   br0 198.51.100.10 (server, "internet")
    host b 203.0.113.130/25 - 203.0.113.129 [nat b] 198.51.100.2 -+

Each NAT masquerades its LAN behind its WAN address (Linux keeps the source port when it is
free). Two behaviours towards unsolicited inbound connections on the WAN:

* ``reject``: nothing filters, so the NAT's own stack answers a SYN for which it has no mapping
  with a reset (the peer sees ECONNREFUSED), and conntrack deletes the sender's mapping with it:
  a punch works only when both SYNs cross between the NATs;
* ``drop``: an nftables filter rule in the input and forward chains drops whatever arrives on
  the WAN that is not established or related (like AWS's NAT gateway): the SYN goes unanswered.

One long-lived peer process (``nat_peer.py``) per private host pairs 20 times in a row, checks a
few KiB both ways on every link and pushes 64 MiB each way at once over the last one; the test
checks that every link really crossed the NATs (each side sees the other's NAT address).

Each peer runs on a CPU of its own, as each host of a real deployment does. This matters in
``reject`` mode: a veth carries a packet within the sender's own softirq, so a SYN's whole trip
(out through its NAT, refused by the peer's NAT, the reset back, the mapping deleted) takes
~20 us of the sending CPU and is over before connect() returns. The two SYNs can only cross when
both peers are inside connect() at once, which two processes sharing one CPU never are.
Measured on a 2-CPU machine (bridged NATs): peers pinned to one CPU never paired (30 s
timeouts); peers on two CPUs took 79 ms on average (median 10 ms, worst 2.4 s in 400
pairings); unpinned peers ~0.5 s on average, up to 14 s while the scheduler kept both on one
CPU. So ``reject`` mode is skipped on a single CPU, where it cannot model two hosts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.local.processes import alive
from tests.common import REPO

PEER_SCRIPT = Path(__file__).resolve().with_name("nat_peer.py")

#: Every namespace of this test is called ``<PREFIX>-<pid of the pytest process>-<random>-<role>``;
#: the pid tells a leftover of a dead run (removed) from a live parallel run (left alone).
PREFIX = "crnat"
SERVER_IP, SERVER_PORT = "198.51.100.10", 10000
ROLES = ("a", "b")
#: role -> (NAT WAN address, NAT LAN address, host address); LANs are the two /25 of 203.0.113.0/24.
SITES = {
    "a": ("198.51.100.1", "203.0.113.1", "203.0.113.2"),
    "b": ("198.51.100.2", "203.0.113.129", "203.0.113.130"),
}
PAIRINGS = 20
PAIR_TIMEOUT = 30.0
EXCHANGE_BYTES = 4096
BULK_BYTES = 64 << 20
#: Seconds the two peers get for everything: 20 pairings, their exchanges and the bulk transfer.
PEERS_DEADLINE = 95.0
COMMAND_TIMEOUT = 20.0


class CommandFailed(RuntimeError):
    """A setup command exited non-zero; the message carries the command and its stderr."""


Command = Sequence[str] | tuple[Sequence[str], str]


def run_commands(commands: Sequence[Command]) -> None:
    """Run each command in order (``argv`` or ``(argv, stdin text)``); raise on the first failure."""
    for command in commands:
        argv, stdin = command if isinstance(command, tuple) else (command, None)
        result = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                check=False)
        if result.returncode != 0:
            raise CommandFailed(f"`{shlex.join(argv)}` exited {result.returncode}: "
                                f"{(result.stderr or result.stdout).strip()}")


def in_ns(namespace: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def nat_ruleset(mode: str) -> str:
    """nftables rules of one NAT router: masquerade out of the WAN, and in ``drop`` mode a firewall."""
    rules = """
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""
    if mode == "drop":
        rules += """
table inet firewall {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state != { established, related } drop
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        iifname "wan" ct state != { established, related } drop
    }
}
"""
    return rules


@dataclass(frozen=True)
class Lab:
    """Names of one test's namespaces."""

    mode: str
    tag: str

    def ns(self, role: str) -> str:
        return f"{PREFIX}-{os.getpid()}-{self.tag}-{role}"

    @property
    def internet(self) -> str:
        return self.ns("inet")

    def nat(self, role: str) -> str:
        return self.ns(f"nat{role}")

    def host(self, role: str) -> str:
        return self.ns(f"host{role}")

    @property
    def namespaces(self) -> list[str]:
        return [self.internet, *(self.nat(role) for role in ROLES), *(self.host(role) for role in ROLES)]


def topology_commands(lab: Lab) -> list[Command]:
    """Everything after ``ip netns add``: links, addresses, routes, forwarding and nftables."""
    inet = lab.internet
    commands: list[Command] = [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in lab.namespaces]
    commands += [
        ["ip", "-n", inet, "link", "add", "br0", "type", "bridge"],
        ["ip", "-n", inet, "addr", "add", f"{SERVER_IP}/24", "dev", "br0"],
        ["ip", "-n", inet, "link", "set", "br0", "up"],
    ]
    for role in ROLES:
        nat, host = lab.nat(role), lab.host(role)
        wan_ip, lan_ip, host_ip = SITES[role]
        commands += [
            # WAN: the NAT's "wan" is plugged into the internet's bridge as port "to<role>"
            ["ip", "-n", nat, "link", "add", "wan", "type", "veth", "peer", "name", f"to{role}", "netns", inet],
            ["ip", "-n", inet, "link", "set", f"to{role}", "master", "br0", "up"],
            ["ip", "-n", nat, "addr", "add", f"{wan_ip}/24", "dev", "wan"],
            ["ip", "-n", nat, "link", "set", "wan", "up"],
            # LAN: the NAT's "lan" to the host's "eth0"
            ["ip", "-n", nat, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", host],
            ["ip", "-n", nat, "addr", "add", f"{lan_ip}/25", "dev", "lan"],
            ["ip", "-n", nat, "link", "set", "lan", "up"],
            ["ip", "-n", host, "addr", "add", f"{host_ip}/25", "dev", "eth0"],
            ["ip", "-n", host, "link", "set", "eth0", "up"],
            ["ip", "-n", host, "route", "add", "default", "via", lan_ip],
            in_ns(nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
            (in_ns(nat, "nft", "-f", "-"), nat_ruleset(lab.mode)),
        ]
    return commands


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL whatever still runs inside one of *our* namespaces (processes this test started)."""
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False,
                            timeout=COMMAND_TIMEOUT)
    for pid in listed.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def delete_namespaces(namespaces: Sequence[str]) -> None:
    """Best effort: kill what runs in them, then delete them (their veths go with them)."""
    for namespace in namespaces:
        _kill_namespace_processes(namespace)
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False,
                       timeout=COMMAND_TIMEOUT)


def remove_leftovers() -> None:
    """Delete namespaces of this test left by runs whose pytest process is gone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False,
                            timeout=COMMAND_TIMEOUT)
    stale = []
    for line in listed.stdout.splitlines():
        name = line.split(" ", 1)[0]
        parts = name.split("-")
        if len(parts) == 4 and parts[0] == PREFIX and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not alive(pid):
                stale.append(name)
    delete_namespaces(stale)


def host_cpus() -> dict[str, int] | None:
    """One CPU per private host (role -> CPU), or None on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return dict(zip(ROLES, cpus, strict=False)) if len(cpus) >= len(ROLES) else None


@pytest.fixture(params=["reject", "drop"])
def nat_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """Build the two-NAT topology in fresh namespaces; always delete them afterwards."""
    if os.geteuid() != 0:
        pytest.skip("NAT test needs root (network namespaces and nftables)")
    if request.param == "reject" and host_cpus() is None:
        pytest.skip("reject-mode NAT test needs 2 CPUs: peers sharing one CPU never send crossing SYNs "
                    "(see the module docstring)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"NAT test needs `{tool}` ({'iproute2' if tool == 'ip' else 'nftables'})")
    remove_leftovers()
    lab = Lab(mode=request.param, tag=secrets.token_hex(3))
    created: list[str] = []
    try:
        for namespace in lab.namespaces:
            try:
                run_commands([["ip", "netns", "add", namespace]])
            except (CommandFailed, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"cannot create a network namespace: {exc}")
            created.append(namespace)
        run_commands(topology_commands(lab))
        yield lab
    finally:
        delete_namespaces(created)


# -- processes -------------------------------------------------------------------------------

def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def started(argv: list[str], stdout: Path, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child writing to files (no pipe to fill), in /work/main; always ended and reaped on exit."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(argv, cwd=REPO, env=_child_env(), stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=err)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def wait_accepting(lab: Lab, server: subprocess.Popen[bytes], deadline: float = 15.0) -> None:
    """Return once the server accepts TCP connections on its pairing port (probed inside the internet)."""
    probe = (
        "import socket, sys, time\n"
        f"end = time.monotonic() + {deadline}\n"
        "while True:\n"
        "    try:\n"
        f"        socket.create_connection(({SERVER_IP!r}, {SERVER_PORT}), timeout=1).close()\n"
        "        sys.exit(0)\n"
        "    except OSError:\n"
        "        if time.monotonic() > end:\n"
        "            sys.exit(1)\n"
        "        time.sleep(0.05)\n"
    )
    result = subprocess.run(in_ns(lab.internet, sys.executable, "-c", probe), capture_output=True, text=True,
                            timeout=deadline + 10, check=False)
    if result.returncode != 0 or server.poll() is not None:
        raise AssertionError(f"rendezvous server not accepting on {SERVER_IP}:{SERVER_PORT} "
                             f"(exit {server.poll()}): {result.stderr.strip()}")


def read_records(path: Path) -> list[dict[str, object]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the test --------------------------------------------------------------------------------

def summarize(role: str, records: list[dict[str, object]]) -> str:
    pairs = [r for r in records if r.get("kind") == "pair"]
    times = [float(r["ms"]) for r in pairs if r.get("ok")]  # type: ignore[arg-type]
    text = f"{role}: {len(times)}/{len(pairs)} paired"
    if times:
        ordered = sorted(times)
        text += (f", ms min {ordered[0]:.1f} median {ordered[len(ordered) // 2]:.1f} max {ordered[-1]:.1f}"
                 f" [{' '.join(f'{t:.0f}' for t in times)}]")
    bulk = [r for r in records if r.get("kind") == "bulk"]
    if bulk and bulk[0].get("ok"):
        text += f"; bulk {bulk[0]['seconds']} s"
    return text


def kept_ports(records: dict[str, list[dict[str, object]]]) -> str:
    """How often each side's public port (as the other side saw it) was its private port."""
    pairs = {role: {r["i"]: r for r in records[role] if r.get("kind") == "pair" and r.get("ok")} for role in ROLES}
    common = sorted(set(pairs["a"]) & set(pairs["b"]))
    kept = {role: sum(pairs[role][i]["local"][1] == pairs[other][i]["peer"][1] for i in common)  # type: ignore[index]
            for role, other in (("a", "b"), ("b", "a"))}
    return ", ".join(f"{role} {kept[role]}/{len(common)}" for role in ROLES)


@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.timeout(130)
def test_pairing_through_two_nats(nat_lab: Lab, tmp_path: Path) -> None:
    lab = nat_lab
    names = f"nat-{lab.mode}-{lab.tag}"
    out = {name: tmp_path / name for name in ("server.out", "server.err")}
    server_argv = in_ns(lab.internet, sys.executable, "-m", "services.rendezvous", "--host", "0.0.0.0",
                        "--port", str(SERVER_PORT), "--health-port", "-1")
    records: dict[str, list[dict[str, object]]] = {}
    exits: dict[str, int | None] = {}
    cpus = host_cpus()
    with started(server_argv, out["server.out"], out["server.err"]) as server:
        wait_accepting(lab, server)
        with contextlib.ExitStack() as stack:
            peers = {}
            for role in ROLES:
                out[f"{role}.out"], out[f"{role}.err"] = tmp_path / f"peer-{role}.jsonl", tmp_path / f"peer-{role}.err"
                argv = in_ns(lab.host(role), sys.executable, str(PEER_SCRIPT), "--role", role,
                             "--server", f"{SERVER_IP}:{SERVER_PORT}", "--names", names,
                             "--count", str(PAIRINGS), "--timeout", str(PAIR_TIMEOUT),
                             "--exchange", str(EXCHANGE_BYTES), "--bulk", str(BULK_BYTES))
                if cpus is not None:
                    argv += ["--cpu", str(cpus[role])]
                peers[role] = stack.enter_context(started(argv, out[f"{role}.out"], out[f"{role}.err"]))
            ends = time.monotonic() + PEERS_DEADLINE
            for role, peer in peers.items():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    peer.wait(timeout=max(0.1, ends - time.monotonic()))
                exits[role] = peer.poll()  # None: still running at the deadline (killed on leaving the stack)
        server_alive = server.poll() is None
    for role in ROLES:
        records[role] = read_records(out[f"{role}.out"])

    summary = "\n".join(summarize(role, records[role]) for role in ROLES)
    summary += f"\nNAT kept the source port: {kept_ports(records)}"
    print(f"\n[{lab.mode}] {summary}")
    context = (f"mode {lab.mode}, exits {exits}\n{summary}\n"
               + "".join(f"--- {name} ---\n{tail(path)}\n" for name, path in out.items()))
    assert server_alive, f"the rendezvous server died\n{context}"
    assert exits == {"a": 0, "b": 0}, f"a peer failed or hung\n{context}"

    for role in ROLES:
        other = "b" if role == "a" else "a"
        pairs = [r for r in records[role] if r.get("kind") == "pair"]
        assert [r["i"] for r in pairs] == list(range(PAIRINGS)), f"{role} did not pair {PAIRINGS} times\n{context}"
        for r in pairs:
            assert r["ok"] and r["data_ok"], f"{role}: pairing {r}\n{context}"
            # the link crossed both NATs: we see the other side's NAT, and we are the private host
            assert r["peer"][0] == SITES[other][0], f"{role} is linked to {r['peer']}, not NAT {other}\n{context}"
            assert r["local"][0] == SITES[role][2], f"{role} sent from {r['local']}\n{context}"
        assert records[role][-1] == {"kind": "done"}, context

    bulk = {role: next(r for r in records[role] if r.get("kind") == "bulk") for role in ROLES}
    for role in ROLES:
        assert bulk[role]["ok"], f"bulk transfer failed on {role}\n{context}"
        assert bulk[role]["sent"] == bulk[role]["received"] == BULK_BYTES, f"{bulk}\n{context}"
    assert bulk["a"]["sent_sha256"] == bulk["b"]["received_sha256"], f"a -> b corrupted\n{context}"
    assert bulk["b"]["sent_sha256"] == bulk["a"]["received_sha256"], f"b -> a corrupted\n{context}"
