"""A private test network of N "hosts" built from Linux network namespaces: what the cluster
tests and `dmc chaos` run nodes in, to cut the network between them.

One dmc node per host, the network cut between groups of hosts::

    with TestNetwork(3) as net:
        p = net.hosts[1].popen([sys.executable, "-m", "dmc...", "--bind", net.hosts[1].address])
        net.partition([0], [1, 2])     # host 0 is cut off from hosts 1 and 2, both ways
        net.heal()                     # everyone talks to everyone again

or cut only some links, so that a host named in no cut (a client host) still reaches every
side, and so that a cut need not be transitive (a bridge: 1 sees 0 and 2, which do not see
each other)::

    net.cut(links_between([0], [1, 2]))   # nodes 0 | 1 2 apart; host 3 reaches all three
    net.cut([(0, 2)])                      # a bridge through host 1

Layout (everything lives in namespaces this module creates; the root namespace's interfaces,
addresses and routes are never touched, nor any namespace it did not create)::

    <prefix>-h0  (<prefix>h0 198.18.0.10/24, lo up) --veth-- <prefix>s0 \\
    <prefix>-h1  (<prefix>h1 198.18.0.11/24, lo up) --veth-- <prefix>s1  >-- bridges <prefix>b0..
    <prefix>-h2  (<prefix>h2 198.18.0.12/24, lo up) --veth-- <prefix>s2 /     in namespace <prefix>-sw

* Host i is the namespace ``<prefix>-h<i>`` with address ``198.18.0.(10+i)/24``. Only addresses
  from 198.18.0.0/15 (the benchmarking range, RFC 2544) are used.
* Host i's interface has the fixed MAC ``02:00:c6:12:00:<10+i in hex>`` and every host has
  permanent neighbour (ARP) entries for all the others, so reachability follows
  ``partition()``/``heal()`` at once instead of waiting for ARP retries (a second apart).
* The switch namespace ``<prefix>-sw`` holds one bridge per partition group; it has no
  addresses and does not route, so nothing crosses between bridges.
* ``partition(*groups)`` moves each host's switch-side veth onto the bridge of its group
  (hosts named in no group are detached from every bridge: isolated alone); ``heal()`` puts
  them all back on bridge 0. Moving a bridge port takes effect for the very next frame, so
  established TCP connections stop passing data at once (and resume by retransmission after a
  heal) -- unlike route changes, which would not cut them.
* ``cut(links)`` drops every packet between the two hosts of each link, both ways, and leaves
  the bridges alone: each host routes the other's address (a /32) to a gateway that is nobody
  (``VOID``, 198.18.0.254, a permanent neighbour entry with a MAC no host has), so frames are
  sent and silently dropped -- a connect times out as across a real partition, rather than
  failing at once as a blackhole route would. A route change invalidates the routes cached by
  established sockets, so their next segment is dropped too; after ``heal()`` (or a ``cut``
  without that link) they resume by retransmission. (No iptables/nft needed: only iproute2.)
* The root namespace gets no interface into the test network. The test harness reaches hosts
  only from inside: ``Host.run`` / ``Host.popen`` run commands in a host's namespace (``ip netns
  exec``), and ``Host.socket`` / ``Host.create_connection`` give the test process itself a
  socket that lives in a host's namespace (created there via setns(2) on the calling thread,
  which is switched straight back; the socket stays in the host's network for its lifetime).

Names are ``<prefix>`` plus a short suffix and fit Linux's 15-character interface-name limit;
the default prefix is ``"dmc"`` plus 6 random hex digits, so parallel runs never collide.
``close()`` (also ``__exit__``, a failed ``__init__`` and, as a last resort, interpreter exit)
kills what ``Host.popen`` started and anything else still running inside our namespaces, then
deletes the namespaces -- which deletes their bridges and veths with them.

A run that crashed leaves namespaces behind; each network holds an flock on
``/run/dmc-netns/<prefix>.lock`` while it lives, so ``TestNetwork.cleanup_stale()`` (called by
every constructor, best effort) touches only namespaces named like ours (``dmc`` + 6 hex
digits, or exactly the explicit prefix given) whose owner is gone: it kills what still runs in
them and deletes them.

Needs root and iproute2; ``TestNetwork.available()`` says whether namespaces work here, and
``TestNetwork.unavailable_reason()`` says why not, for ``pytest.skip``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Self

__all__ = ["Host", "TestNetwork", "in_netns", "links_between"]

NETWORK = ipaddress.ip_network("198.18.0.0/15")  # the only addresses this module ever uses
SUBNET = ipaddress.ip_network("198.18.0.0/24")   # the hosts' shared link
FIRST_HOST_OCTET = 10                            # host i is 198.18.0.(10 + i)
VOID = "198.18.0.254"                            # cut links are routed here: nobody has it
VOID_MAC = "02:00:c6:12:00:fe"
MAX_HOSTS = 254 - FIRST_HOST_OCTET
IFNAMSIZ = 15                                    # longest Linux interface name
DEFAULT_PREFIX_BASE = "dmc"

_DEFAULT_NS_RE = re.compile(rf"^({DEFAULT_PREFIX_BASE}[0-9a-f]{{6}})-(?:sw|h[0-9]+)$")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*$")
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")


def _mac(index: int) -> str:
    """Host i's MAC: locally administered, fixed, so every host knows every other's."""
    return f"02:00:c6:12:00:{FIRST_HOST_OCTET + index:02x}"


def _lock_dir() -> Path:
    return Path("/run/dmc-netns") if os.access("/run", os.W_OK) else Path("/tmp/dmc-netns")


def _ip(args: Sequence[str], batch: Sequence[str] | None = None, *, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `ip args...`, feeding `batch` lines to `ip -b -` when given."""
    argv = ["ip", *args]
    if batch is not None:
        argv += ["-b", "-"]
    stdin = "".join(line + "\n" for line in batch or ())
    cp = subprocess.run(argv, check=False, input=stdin, text=True, capture_output=True,
                        timeout=timeout)
    if check and cp.returncode != 0:
        what = " ".join(argv) + ("" if batch is None else " <<< " + "; ".join(batch))
        raise RuntimeError(f"{what} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def _list_netns() -> list[str]:
    cp = _ip(["netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def _ns_inode(name: str) -> tuple[int, int] | None:
    """The identity (device, inode) of namespace `name`, None if there is none by that name."""
    try:
        st = os.stat(_NETNS_DIR / name)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# --- entering a namespace on the calling thread (os.setns is Python 3.12+) ---------------------

def _setns(fd: int) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `name`; other threads are unaffected."""
    with open("/proc/thread-self/ns/net", "rb") as home, open(_NETNS_DIR / name, "rb") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def links_between(*groups: Sequence[int]) -> set[tuple[int, int]]:
    """Every link between two hosts of different groups: what `cut` takes to split them."""
    return {(min(a, b), max(a, b)) for i, g in enumerate(groups) for h in groups[i + 1:]
            for a in g for b in h}


# --- ownership locks ------------------------------------------------------------------------------

def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path` (created if need be), or None if another open
    file holds it. Retries if the file is replaced under us, so the lock is on the live file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release_lock(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


# --- killing what runs inside our namespaces ------------------------------------------------------

def _kill_netns_pids(name: str) -> None:
    """SIGKILL every process whose network namespace is ours (`name`), verified through a pidfd
    so that a recycled pid is never signalled."""
    ino = _ns_inode(name)
    if ino is None:
        return
    cp = _ip(["netns", "pids", name], check=False)
    for tok in cp.stdout.split():
        if not tok.isdigit() or int(tok) == os.getpid():
            continue
        pid = int(tok)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
            if (st.st_dev, st.st_ino) == ino:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(pidfd)


def _delete_netns(names: Sequence[str]) -> list[str]:
    """Delete namespaces (best effort); return those that still exist afterwards."""
    names = [n for n in names if _ns_inode(n) is not None]
    if names:
        _ip(["-force"], [f"netns del {n}" for n in names], check=False)
    left = [n for n in names if _ns_inode(n) is not None]
    for n in left:
        _ip(["netns", "del", n], check=False)
    return [n for n in left if _ns_inode(n) is not None]


class Host:
    """One host of a TestNetwork: a network namespace with one interface on the test network."""

    def __init__(self, net: TestNetwork, index: int) -> None:
        self.index = index
        self.name = f"{net.prefix}-h{index}"                 # namespace name
        self.interface = f"{net.prefix}h{index}"             # its veth, inside the namespace
        self.address = str(SUBNET.network_address + FIRST_HOST_OCTET + index)
        self.mac = _mac(index)                                # of its interface
        self._net = weakref.proxy(net)

    def __repr__(self) -> str:
        return f"Host({self.index}, name={self.name!r}, address={self.address!r})"

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a string")
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start argv inside this host's namespace. The Popen's pid is argv's own process
        (`ip netns exec` execs it). TestNetwork.close() kills it if it is still running."""
        p = subprocess.Popen(self._argv(argv), **kw)
        self._net._track(p)
        return p

    def run(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """subprocess.run(argv, **kw) inside this host's namespace."""
        check = kw.pop("check", False)
        return subprocess.run(self._argv(argv), check=check, **kw)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket of the test process that lives in this host's network (bind, connect or
        listen on it as usual; it obeys partitions like the host's own processes)."""
        with in_netns(self.name):
            return socket.socket(family, type, proto)

    def create_connection(self, address: tuple[str, int], timeout: float | None = None,
                          source_port: int = 0) -> socket.socket:
        """A TCP connection from this host to `address` (an IP address, not a name)."""
        s = self.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            if source_port:
                s.bind((self.address, source_port))
            s.connect(address)
        except BaseException:
            s.close()
            raise
        return s


class TestNetwork:
    """N hosts on a private switched network that tests can partition and heal."""

    __test__ = False  # not a pytest test class, despite its name

    _open: ClassVar[weakref.WeakSet[TestNetwork]] = weakref.WeakSet()
    _availability: ClassVar[tuple[bool, str] | None] = None

    def __init__(self, n_hosts: int, *, prefix: str | None = None) -> None:
        if not isinstance(n_hosts, int) or not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be an int in 1..{MAX_HOSTS}, not {n_hosts!r}")
        explicit = prefix is not None
        if prefix is None:
            prefix = DEFAULT_PREFIX_BASE + secrets.token_hex(3)
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must be lowercase letters and digits, not {prefix!r}")
        last = n_hosts - 1
        longest = max(f"{prefix}-h{last}", f"{prefix}-sw", f"{prefix}s{last}", f"{prefix}b{last}",
                      key=len)
        if len(longest) > IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} is too long for {n_hosts} hosts: "
                             f"{longest!r} exceeds {IFNAMSIZ} characters")
        self.prefix = prefix
        self._n_hosts = n_hosts
        self.switch = f"{prefix}-sw"                      # the switch namespace
        self.hosts: list[Host] = []
        self._port_bridge: list[str | None] = []          # switch-side veth i -> its bridge
        self._bridges: set[str] = set()
        self._cut: set[tuple[int, int]] = set()           # links cut by cut(), as (low, high)
        self._procs: list[subprocess.Popen] = []
        self._procs_lock = threading.Lock()
        self._lock_path = _lock_dir() / f"{prefix}.lock"
        self._lock_fd: int | None = None
        self._created: list[str] = []                     # namespaces we made (and must delete)
        self._closed = False

        with contextlib.suppress(Exception):
            self.cleanup_stale(prefix if explicit else None)
        self._lock_fd = _try_lock(self._lock_path)
        if self._lock_fd is None:
            raise ValueError(f"prefix {prefix!r} is in use by a live TestNetwork")
        TestNetwork._open.add(self)
        try:
            self._build(n_hosts)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise

    # --- building ---------------------------------------------------------------------------------

    def _bridge(self, g: int) -> str:
        return f"{self.prefix}b{g}"

    def _port(self, i: int) -> str:
        return f"{self.prefix}s{i}"

    def _build(self, n: int) -> None:
        hosts = [Host(self, i) for i in range(n)]
        # Left over by a crashed run with this very (explicit) prefix? Ours now: start clean.
        mine = re.compile(rf"^{re.escape(self.prefix)}-(?:sw|h[0-9]+)$")
        stale = [ns for ns in _list_netns() if mine.match(ns)]
        if _delete_netns(stale):
            raise RuntimeError(f"cannot delete stale namespaces {stale}")
        for ns in [self.switch] + [h.name for h in hosts]:
            if _ns_inode(ns) is not None:
                raise RuntimeError(f"namespace {ns} already exists (not ours)")
            try:
                _ip(["netns", "add", ns])
            finally:
                if _ns_inode(ns) is not None:     # it did not exist before: ours to delete
                    self._created.append(ns)
        br = self._bridge(0)
        batch = [f"link add {br} type bridge stp_state 0 forward_delay 0",
                 f"link set dev {br} addrgenmode none", f"link set dev {br} up"]
        for h in hosts:
            port = self._port(h.index)
            batch += [f"link add {port} type veth peer name {h.interface} netns {h.name}",
                      f"link set dev {port} addrgenmode none",
                      f"link set dev {port} master {br}", f"link set dev {port} up"]
        _ip(["-n", self.switch], batch)
        self._bridges.add(br)
        for h in hosts:
            self._configure_host(h)
            self.hosts.append(h)
            self._port_bridge.append(br)

    def _configure_host(self, h: Host) -> None:
        addr = ipaddress.ip_address(h.address)
        assert addr in SUBNET and addr in NETWORK, addr
        batch = ["link set dev lo up",
                 f"link set dev {h.interface} address {h.mac}",
                 f"addr add {h.address}/{SUBNET.prefixlen} dev {h.interface}",
                 f"link set dev {h.interface} up"]
        # Permanent neighbour entries: ARP never has to re-resolve after a heal (its retries
        # are a second apart), so reachability follows partition()/heal() at once.
        batch += [f"neigh replace {SUBNET.network_address + FIRST_HOST_OCTET + j} "
                  f"lladdr {_mac(j)} dev {h.interface} nud permanent"
                  for j in range(self._n_hosts) if j != h.index]
        batch.append(f"neigh replace {VOID} lladdr {VOID_MAC} dev {h.interface} nud permanent")
        _ip(["-n", h.name], batch)

    def _track(self, p: subprocess.Popen) -> None:
        with self._procs_lock:
            self._procs = [q for q in self._procs if q.poll() is None]
            self._procs.append(p)

    # --- partitions -------------------------------------------------------------------------------

    def partition(self, *groups: Sequence[int]) -> None:
        """Hosts in the same group can talk; nothing passes between groups, either way. Hosts
        named in no group are isolated alone. Takes effect before this returns, for existing
        connections too. Each call replaces the previous partition."""
        self._check_open()
        n = len(self.hosts)
        want: list[str | None] = [None] * n
        g = 0                                     # bridge of the next non-empty group
        for group in groups:
            if isinstance(group, (int, str, bytes)):
                raise TypeError(f"each group must be a list of host indexes, not {group!r}")
            group = list(group)
            if not group:
                continue
            for i in group:
                if not isinstance(i, int) or not 0 <= i < n:
                    raise ValueError(f"no host {i!r} (hosts are 0..{n - 1})")
                if want[i] is not None:
                    raise ValueError(f"host {i} is named in more than one group")
                want[i] = self._bridge(g)
            g += 1
        batch: list[str] = []
        for br in sorted({b for b in want if b is not None} - self._bridges):
            batch += [f"link add {br} type bridge stp_state 0 forward_delay 0",
                      f"link set dev {br} addrgenmode none", f"link set dev {br} up"]
        moving = [i for i in range(n) if want[i] != self._port_bridge[i]]
        # Detach every moving port first, then attach: no intermediate state ever joins hosts
        # that are apart both before and after.
        batch += [f"link set dev {self._port(i)} nomaster"
                  for i in moving if self._port_bridge[i] is not None]
        batch += [f"link set dev {self._port(i)} master {want[i]}"
                  for i in moving if want[i] is not None]
        if not batch:
            return
        try:
            _ip(["-n", self.switch], batch)
        finally:
            self._sync_state()

    def heal(self) -> None:
        """Everyone talks to everyone again (partition() and cut() both undone)."""
        self.cut([])
        self.partition(list(range(len(self.hosts))))

    @property
    def links_cut(self) -> set[tuple[int, int]]:
        return set(self._cut)

    def cut(self, links: Iterable[tuple[int, int]]) -> None:
        """Drop everything between the two hosts of each link, both ways; every other pair of
        hosts (on one bridge) still talks. Replaces the previous cut; takes effect before this
        returns, for established connections too."""
        self._check_open()
        n = len(self.hosts)
        want = set()
        for link in links:
            a, b = link
            for i in (a, b):
                if not isinstance(i, int) or not 0 <= i < n:
                    raise ValueError(f"no host {i!r} (hosts are 0..{n - 1})")
            if a == b:
                raise ValueError(f"a link joins two hosts, not {link!r}")
            want.add((min(a, b), max(a, b)))
        made: dict[int, list[str]] = {}
        dropped: dict[int, list[str]] = {}
        for a, b in want - self._cut:
            for here, there in ((a, b), (b, a)):
                made.setdefault(here, []).append(
                    f"route replace {self.hosts[there].address}/32 via {VOID} "
                    f"dev {self.hosts[here].interface}")
        for a, b in self._cut - want:
            for here, there in ((a, b), (b, a)):
                dropped.setdefault(here, []).append(
                    f"route del {self.hosts[there].address}/32")
        try:
            for i, batch in sorted(dropped.items()):    # a half-made cut may miss a route
                _ip(["-force", "-n", self.hosts[i].name], batch, check=False)
            for i, batch in sorted(made.items()):
                _ip(["-n", self.hosts[i].name], batch)
        finally:
            self._cut = self._read_cut()

    def _read_cut(self) -> set[tuple[int, int]]:
        """The links cut now, read back from the hosts' routes (after a partial failure too)."""
        index = {h.address: h.index for h in self.hosts}
        found = set()
        for h in self.hosts:
            cp = _ip(["-n", h.name, "-o", "route", "show", "via", VOID], check=False)
            for line in cp.stdout.splitlines():
                there = index.get(line.split()[0].removesuffix("/32"))
                if there is not None:
                    found.add((min(h.index, there), max(h.index, there)))
        return found

    def _sync_state(self) -> None:
        """Re-read which bridge each port is on (after a partial failure too)."""
        cp = _ip(["-n", self.switch, "-o", "link", "show"], check=False)
        masters: dict[str, str | None] = {}
        bridges: set[str] = set()
        for line in cp.stdout.splitlines():
            m = re.match(r"^\d+:\s+([^:@\s]+)", line)
            if not m:
                continue
            name = m.group(1)
            mm = re.search(r"\smaster\s+(\S+)", line)
            masters[name] = mm.group(1) if mm else None
            if re.fullmatch(rf"{re.escape(self.prefix)}b[0-9]+", name):
                bridges.add(name)
        if masters:
            self._bridges = bridges
            self._port_bridge = [masters.get(self._port(i)) for i in range(len(self.hosts))]

    # --- teardown ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("TestNetwork is closed")

    def close(self) -> None:
        """Kill processes still running in our namespaces and delete the namespaces (with
        their bridges and veths). Idempotent; tries every step even if one fails."""
        if self._closed:
            return
        self._closed = True
        TestNetwork._open.discard(self)
        errors: list[str] = []
        with self._procs_lock:
            procs, self._procs = self._procs, []
        for p in procs:
            try:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
            except Exception as e:  # noqa: BLE001 - keep tearing down
                errors.append(f"cannot kill pid {p.pid}: {e}")
        for ns in self._created:
            try:
                _kill_netns_pids(ns)
            except Exception as e:  # noqa: BLE001
                errors.append(f"cannot kill processes in {ns}: {e}")
        try:
            # The switch goes first: deleting it destroys every veth pair at once.
            left = _delete_netns(sorted(self._created, key=lambda ns: ns != self.switch))
            if left:
                errors.append(f"namespaces not deleted: {left}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"cannot delete namespaces: {e}")
        if self._lock_fd is not None:
            _release_lock(self._lock_path, self._lock_fd)
            self._lock_fd = None
        if errors:
            raise RuntimeError("TestNetwork.close: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self.hosts)} hosts"
        return f"TestNetwork(prefix={self.prefix!r}, {state})"

    # --- class-level helpers ----------------------------------------------------------------------

    @classmethod
    def cleanup_stale(cls, prefix: str | None = None) -> list[str]:
        """Delete namespaces left by crashed runs: named `dmc` + 6 hex digits + `-sw`/`-h<i>`
        (or, given `prefix`, exactly `<prefix>-sw`/`<prefix>-h<i>`) and whose owner's lock is
        not held; what still runs inside them is killed first. Returns the namespaces deleted.
        Never touches anything else."""
        exact = re.compile(rf"^({re.escape(prefix)})-(?:sw|h[0-9]+)$") if prefix else None
        by_prefix: dict[str, list[str]] = {}
        for ns in _list_netns():
            m = _DEFAULT_NS_RE.match(ns) or (exact.match(ns) if exact else None)
            if m:
                by_prefix.setdefault(m.group(1), []).append(ns)
        deleted: list[str] = []
        for p, names in by_prefix.items():
            path = _lock_dir() / f"{p}.lock"
            fd = _try_lock(path)
            if fd is None:
                continue                            # its owner is alive
            try:
                for ns in names:
                    _kill_netns_pids(ns)
                left = _delete_netns(sorted(names, key=lambda ns: not ns.endswith("-sw")))
                deleted += [ns for ns in names if ns not in left]
            finally:
                _release_lock(path, fd)
        return deleted

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if test networks can be built here, else why not (probed once, then cached)."""
        if cls._availability is None:
            cls._availability = cls._probe()
        ok, why = cls._availability
        return None if ok else why

    @classmethod
    def available(cls) -> bool:
        """True if namespaces can be created here (root, `ip` present, a trial network works)."""
        return cls.unavailable_reason() is None

    @classmethod
    def _probe(cls) -> tuple[bool, str]:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return False, "network namespaces need root"
        if shutil.which("ip") is None:
            return False, "the `ip` command (iproute2) is not installed"
        try:
            with cls(1):
                pass
        except Exception as e:  # noqa: BLE001
            return False, f"cannot create a trial network namespace: {e}"
        return True, ""


@atexit.register
def _close_all_at_exit() -> None:
    for net in list(TestNetwork._open):
        with contextlib.suppress(Exception):
            net.close()

