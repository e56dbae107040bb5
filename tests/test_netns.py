"""The namespace test network (chaos/netns.py) with real traffic: hosts reach each other,
partitions cut new and established TCP connections both ways, heal restores them, and nothing
is left behind."""

from __future__ import annotations

import ipaddress
import re
import secrets
import select
import socket
import subprocess
import sys
import time

import pytest
from chaos.netns import IFNAMSIZ, TestNetwork, links_between

if not TestNetwork.available():
    pytest.skip(f"network namespaces unavailable: {TestNetwork.unavailable_reason()}",
                allow_module_level=True)

PORT = 7000
PY = [sys.executable, "-I", "-S", "-c"]

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""

CLIENT = """
import socket, sys
t = float(sys.argv[3])
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=t)
    s.settimeout(t)
    sys.exit(0 if s.recv(2) == b"hi" else 2)
except OSError as e:
    print(e)
    sys.exit(1)
"""


def ip_out(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def root_links(prefix: str) -> list[str]:
    """Interfaces of the root namespace whose name carries `prefix` (there should be none)."""
    links = [line.split(":")[1].strip() for line in ip_out("-o", "link", "show").splitlines()]
    return [n for n in links if n.startswith(prefix)]


def leftovers(prefix: str) -> list[str]:
    """Namespaces and root-namespace interfaces whose name carries `prefix`."""
    names = [line.split()[0] for line in ip_out("netns", "list").splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)] + root_links(prefix)


@pytest.fixture
def net():
    n = TestNetwork(3)
    procs: list[subprocess.Popen] = []
    n.started = procs
    try:
        yield n
    finally:
        for p in procs:
            p.kill()
            p.wait()
        n.close()
        assert leftovers(n.prefix) == []


def serve(net: TestNetwork, i: int) -> None:
    """A TCP listener on host i that greets every connection with b"hi"."""
    h = net.hosts[i]
    p = h.popen([*PY, SERVER, h.address, str(PORT)], stdout=subprocess.PIPE, text=True)
    net.started.append(p)
    ready, _, _ = select.select([p.stdout], [], [], 10)
    assert ready and p.stdout.readline().strip() == "ready", f"server on host {i} did not start"


def reach(net: TestNetwork, *pairs: tuple[int, int], timeout: float = 0.3) -> list[bool]:
    """For each (src, dst): can a client on host src connect to host dst's listener and get
    its greeting? The clients run in parallel, each inside its own host's namespace."""
    clients = [net.hosts[s].popen([*PY, CLIENT, net.hosts[d].address, str(PORT), str(timeout)],
                                  stdout=subprocess.DEVNULL)
               for s, d in pairs]
    return [p.wait(timeout=10) == 0 for p in clients]


def test_hosts_are_named_and_addressed_within_the_rules(net):
    assert [h.index for h in net.hosts] == [0, 1, 2]
    assert len({h.address for h in net.hosts}) == 3
    for h in net.hosts:
        assert ipaddress.ip_address(h.address) in ipaddress.ip_network("198.18.0.0/15")
        assert h.name.startswith(net.prefix) and len(h.name) <= IFNAMSIZ
        assert len(h.interface) <= IFNAMSIZ
        out = h.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                    check=True).stdout
        assert f"{h.address}/24" in out and "127.0.0.1/8" in out
    assert root_links(net.prefix) == []           # the root namespace got nothing of ours


def test_all_hosts_reach_each_other(net):
    for i in range(3):
        serve(net, i)
    assert reach(net, (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)) == [True] * 6


def test_partition_cuts_between_groups_and_heal_restores(net):
    for i in range(3):
        serve(net, i)
    net.partition([0], [1, 2])
    assert reach(net, (0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)) == \
        [False, False, False, False, True, True]
    net.heal()
    assert reach(net, (0, 1), (1, 0), (0, 2)) == [True, True, True]
    # A host named in no group is isolated alone.
    net.partition([0, 1])
    assert reach(net, (0, 1), (1, 0), (2, 0), (0, 2), (2, 1)) == \
        [True, True, False, False, False]
    net.heal()
    assert reach(net, (2, 0), (1, 2)) == [True, True]


def test_cut_drops_only_the_links_named_and_heal_restores(net):
    for i in range(3):
        serve(net, i)
    # Hosts 0 | 1 apart; host 2 (a client host) still reaches both, and both reach it.
    net.cut(links_between([0], [1]))
    assert net.links_cut == {(0, 1)}
    assert reach(net, (0, 1), (1, 0), (2, 0), (2, 1), (0, 2), (1, 2)) == \
        [False, False, True, True, True, True]
    # A bridge: 1 sees 0 and 2, which do not see each other (replaces the cut before).
    net.cut([(2, 0)])
    assert reach(net, (0, 2), (2, 0), (0, 1), (1, 0), (1, 2), (2, 1)) == \
        [False, False, True, True, True, True]
    net.heal()
    assert net.links_cut == set()
    assert reach(net, (0, 2), (2, 0), (0, 1)) == [True, True, True]


def _received(conns: list[socket.socket], timeout: float) -> dict[int, bytes]:
    """What arrives on each connection (by index) within `timeout` seconds."""
    got: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(got) < len(conns) and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([c for c in conns if conns.index(c) not in got], [], [],
                                       left)
        for c in readable:
            got[conns.index(c)] = c.recv(100)
    return got


def test_established_connection_stops_under_partition_and_resumes_after_heal(net):
    h0, h1 = net.hosts[0], net.hosts[1]
    with h1.socket() as listener:
        listener.bind((h1.address, PORT))
        listener.listen(1)
        client = h0.create_connection((h1.address, PORT), timeout=5)
        server, peer = listener.accept()
    with client, server:
        assert peer[0] == h0.address              # really came over the test network
        client.sendall(b"ping")
        server.sendall(b"pong")
        assert _received([server, client], 2) == {0: b"ping", 1: b"pong"}

        net.partition([0], [1, 2])
        client.sendall(b"lost?")
        server.sendall(b"lost too?")
        assert _received([server, client], 0.6) == {}, "data crossed the partition"

        net.heal()                                # TCP retransmits what was held back
        assert _received([server, client], 10) == {0: b"lost?", 1: b"lost too?"}

        net.cut([(0, 1)])                         # a cut link stops it the same way
        client.sendall(b"cut?")
        server.sendall(b"cut too?")
        assert _received([server, client], 0.6) == {}, "data crossed the cut link"
        net.heal()
        assert _received([server, client], 10) == {0: b"cut?", 1: b"cut too?"}


def test_close_removes_everything_and_kills_what_it_started():
    net = TestNetwork(2)
    prefix = net.prefix
    net.partition([0], [1])                       # a second bridge exists now
    sleeper = net.hosts[0].popen(["sleep", "60"])
    assert len(leftovers(prefix)) == 3            # two hosts and the switch
    net.close()
    assert sleeper.poll() is not None
    assert leftovers(prefix) == []
    net.close()                                   # idempotent
    with pytest.raises(RuntimeError):
        net.heal()


def test_context_manager_cleans_up_after_an_exception():
    with pytest.raises(ZeroDivisionError), TestNetwork(2) as net:
        prefix = net.prefix
        1 / 0  # noqa: B018
    assert leftovers(prefix) == []


def test_failed_build_removes_what_it_created(monkeypatch):
    prefix = f"dmcf{secrets.token_hex(2)}"
    real = TestNetwork._configure_host

    def fail_on_second(self, h):
        if h.index == 1:
            raise RuntimeError("injected failure")
        real(self, h)

    monkeypatch.setattr(TestNetwork, "_configure_host", fail_on_second)
    with pytest.raises(RuntimeError, match="injected failure"):
        TestNetwork(3, prefix=prefix)
    assert leftovers(prefix) == []


def test_stale_cleanup_removes_only_dead_namespaces_of_ours():
    orphan = f"dmc{secrets.token_hex(3)}-h0"      # named like ours, owner gone (no lock held)
    foreign = f"dmcz{secrets.token_hex(2)}-h0"    # not our naming pattern
    with TestNetwork(1) as live:                  # a live network: its lock is held
        try:
            subprocess.run(["ip", "netns", "add", orphan], check=True)
            subprocess.run(["ip", "netns", "add", foreign], check=True)
            deleted = TestNetwork.cleanup_stale()
            # (A parallel run's constructor may have beaten us to the orphan.)
            assert all(re.fullmatch(r"dmc[0-9a-f]{6}-(sw|h[0-9]+)", ns) for ns in deleted)
            left = ip_out("netns", "list")
            assert orphan not in left
            assert foreign in left
            assert live.hosts[0].name in left and live.switch in left
        finally:
            for ns in (orphan, foreign):
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        # The constructor cleans up too.
        subprocess.run(["ip", "netns", "add", orphan], check=True)
        try:
            with TestNetwork(1):
                assert orphan not in ip_out("netns", "list")
        finally:
            subprocess.run(["ip", "netns", "del", orphan], check=False, capture_output=True)
        assert live.hosts[0].name in ip_out("netns", "list")


def test_bad_arguments_are_refused(net):
    with pytest.raises(ValueError, match="more than one group"):
        net.partition([0, 1], [1, 2])
    with pytest.raises(ValueError, match="no host"):
        net.partition([0, 3])
    with pytest.raises(ValueError, match="no host"):
        net.cut([(0, 3)])
    with pytest.raises(ValueError, match="two hosts"):
        net.cut([(1, 1)])
    with pytest.raises(TypeError):
        net.hosts[0].run("true")
    with pytest.raises(ValueError, match="too long"):
        TestNetwork(2, prefix="averyverylongprefix")
    with pytest.raises(ValueError, match="in use"):
        TestNetwork(1, prefix=net.prefix)
