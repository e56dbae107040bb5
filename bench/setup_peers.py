#!/usr/bin/env python3
"""Start the peer-comparison setup on 127.0.0.1, and take all of it down again.

What it starts, each on a free port chosen at run time (bind port 0, then hand the port over):

  * 3 redis-server shards       (--save "" --appendonly no)
  * 1 redis-server as "direct"  (the no-proxy reference; same settings)
  * nutcracker (twemproxy)      over the 3 shards: hash fnv1a_64, distribution ketama,
                                redis: true, server_connections: 1
  * dmcproxy                    over the same 3 shards (python3 -m dmc.proxy --port 0 ...)
  * optionally, more dmcproxies from other checkouts (`trees={"dmc-base": "/path"}`: the same
    `python3 -m dmc.proxy`, imported from that tree, e.g. a build of the tree before a change)
    and predixy with N worker threads (`predixy_threads=[1, 2]`, built by
    ../shared/peers/build-predixy.sh, sharded by CRC16 with hash tags as dmcproxy shards)

and waits until every one of them answers PING. Temporary files (configs, logs, pid file) go
in a tempfile.mkdtemp() directory, removed on stop unless keep_tmp=True.

Everything started is stopped (SIGTERM, then SIGKILL after 5 s) when the context manager
exits, at interpreter exit (atexit), and on SIGTERM/SIGHUP/SIGINT to this process. As a last
resort, every child gets PR_SET_PDEATHSIG=SIGKILL, so it dies even if this process is killed
with SIGKILL.

As a library:

    from setup_peers import Peers
    with Peers() as peers:
        peers.direct.port, peers.twemproxy.pid, peers.dmcproxy.spec  # "dmcproxy=127.0.0.1:P@PID"
        peers.shard_pids                                             # [pid, pid, pid]

As a CLI:

    python3 bench/setup_peers.py            # start, print endpoints, wait for Ctrl-C
    python3 bench/setup_peers.py --json     # same, endpoints as one JSON line
    python3 bench/setup_peers.py -- CMD...  # start, run CMD with the endpoints in its
                                            # environment (PEERS_JSON, SHARD_PIDS,
                                            # PROXYBENCH_TARGETS, DIRECT, TWEMPROXY, DMCPROXY),
                                            # stop everything when CMD exits; exit with its code

The RLIMIT_NOFILE soft limit is raised to the hard limit before anything is started (so the
proxies inherit it and can hold 10,000+ client connections); pass raise_nofile=False to skip.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent          # dmc is imported from here (in place)
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- small helpers

def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (the kernel picks it when binding port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if host:port answers a RESP PING with +PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            buf = b""
            while not buf.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                buf += chunk
            return buf.startswith(b"+PONG")
    except OSError:
        return False


def raise_nofile_limit(target: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `target` (default: the hard limit); returns (soft, hard).
    Children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if target is None else target
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_libc = None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies (Linux)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)     # PR_SET_PDEATHSIG = 1
    except Exception:                               # never fail the exec over this
        pass


# --------------------------------------------------------------------------- data

@dataclass
class Endpoint:
    name: str
    host: str
    port: int
    pid: int

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def spec(self) -> str:
        """NAME=HOST:PORT@PID, as /work/shared/bench/proxybench.sh wants it."""
        return f"{self.name}={self.host}:{self.port}@{self.pid}"


# --------------------------------------------------------------------------- cleanup plumbing

_live: "set[Peers]" = set()
_live_lock = threading.Lock()
_handlers_installed = False
_prev_handlers: dict[int, object] = {}


def _stop_all() -> None:
    with _live_lock:
        peers = list(_live)
    for p in peers:
        p.stop()


def _on_signal(signum, frame) -> None:
    _stop_all()
    prev = _prev_handlers.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)             # e.g. Python's SIGINT -> KeyboardInterrupt
        return
    if prev == signal.SIG_IGN:
        return
    # Default disposition: die of the same signal, so the exit status says what happened.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_cleanup() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return                          # signal handlers can only be set from the main thread
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        try:
            prev = signal.getsignal(sig)
            if prev == signal.SIG_IGN:
                continue                # e.g. nohup, or SIGINT in a background job: respect it
            _prev_handlers[sig] = prev
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):
            pass


# --------------------------------------------------------------------------- the setup

class Peers:
    """3 redis shards + direct redis + nutcracker + dmcproxy; see the module docstring."""

    def __init__(self, nshards: int = 3, dmc_args=(), twemproxy_extra: dict | None = None,
                 keep_tmp: bool = False, raise_nofile: bool = True, log=None,
                 trees: dict[str, str] | None = None, predixy_threads=(), dmc_threads=()):
        self.nshards = nshards
        self.dmc_threads = [t for t in dmc_threads if t != 1]
        self.trees = dict(trees or {})
        self.predixy_threads = list(predixy_threads)
        self.extra: dict[str, Endpoint] = {}
        self.dmc_args = list(dmc_args)
        self.twemproxy_extra = dict(twemproxy_extra or {})
        self.keep_tmp = keep_tmp
        self.raise_nofile = raise_nofile
        self.log = log or (lambda msg: None)
        self.tmpdir: Path | None = None
        self.procs: list[subprocess.Popen] = []     # every process started, in start order
        self.shards: list[Endpoint] = []
        self.direct: Endpoint | None = None
        self.twemproxy: Endpoint | None = None
        self.dmcproxy: Endpoint | None = None
        self._stopped = False

    # -- public view
    @property
    def shard_pids(self) -> list[int]:
        return [s.pid for s in self.shards]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def endpoints(self) -> dict[str, Endpoint]:
        """The endpoints a client talks to, baseline first."""
        return {"direct": self.direct, "twemproxy": self.twemproxy, **self.extra,
                "dmcproxy": self.dmcproxy}

    def proxybench_targets(self) -> list[str]:
        return [e.spec for e in self.endpoints().values()]

    def as_dict(self) -> dict:
        return {
            "tmpdir": str(self.tmpdir),
            "shards": [asdict(s) for s in self.shards],
            **{k: asdict(v) for k, v in self.endpoints().items()},
            "shard_pids": self.shard_pids,
            "proxybench_targets": self.proxybench_targets(),
        }

    def env(self) -> dict[str, str]:
        """Environment variables describing the setup (for child commands)."""
        return {
            "PEERS_JSON": json.dumps(self.as_dict()),
            "SHARD_PIDS": ",".join(map(str, self.shard_pids)),
            "PROXYBENCH_TARGETS": " ".join(self.proxybench_targets()),
            "DIRECT": self.direct.addr, "TWEMPROXY": self.twemproxy.addr,
            "DMCPROXY": self.dmcproxy.addr,
        }

    # -- lifecycle
    def __enter__(self) -> "Peers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Peers":
        if self.raise_nofile:
            raise_nofile_limit()
        _install_cleanup()
        with _live_lock:
            _live.add(self)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dmc-peers-"))
        try:
            for i in range(self.nshards):
                self.shards.append(self._start_redis(f"shard{i}"))
            self.direct = self._start_redis("direct")
            self.twemproxy = self._start_twemproxy()
            for threads in self.predixy_threads:
                self.extra[f"predixy-{threads}t"] = self._start_predixy(threads)
            for name, tree in self.trees.items():
                self.extra[name] = self._start_dmcproxy(name, Path(tree))
            for threads in self.dmc_threads:
                name = f"dmcproxy-{threads}t"
                self.extra[name] = self._start_dmcproxy(name, extra=["--threads", str(threads)])
            self.dmcproxy = self._start_dmcproxy()
            for ep in [*self.shards, *self.endpoints().values()]:
                self._wait_ping(ep)
        except BaseException:
            self.stop()
            raise
        self.log("peers up: " + " ".join(self.proxybench_targets())
                 + f" shards={','.join(s.addr for s in self.shards)} tmp={self.tmpdir}")
        return self

    def stop(self) -> None:
        """Stop every process this object started (proxies first, then redis), newest first."""
        if self._stopped:
            return
        self._stopped = True
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in reversed(self.procs):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with _live_lock:
            _live.discard(self)
        if self.tmpdir and not self.keep_tmp:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- internals
    def _popen(self, args, logname: str, stdout_name: str | None = None, cwd=None, env=None):
        log = open(self.tmpdir / logname, "ab")
        out = open(self.tmpdir / stdout_name, "ab") if stdout_name else log
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT if out is log else log,
                                    cwd=cwd, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        finally:
            log.close()
            if out is not log:
                out.close()
        self.procs.append(proc)
        return proc

    def _tail(self, name: str, n: int = 800) -> str:
        try:
            return (self.tmpdir / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _wait_ping(self, ep: Endpoint, proc: subprocess.Popen | None = None,
                   logname: str = "", timeout: float = START_TIMEOUT) -> bool:
        """Until ep answers PING. With proc: False if proc exits first (caller may retry)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ping(ep.host, ep.port):
                return True
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise TimeoutError(f"{ep.name} on {ep.addr} did not answer PING within {timeout}s; "
                           f"log: {self._tail(logname)}")

    def _start_redis(self, name: str, attempts: int = 5) -> Endpoint:
        for _ in range(attempts):
            port = free_port()
            logname = f"redis-{name}.log"
            proc = self._popen([REDIS_SERVER, "--port", str(port), "--bind", HOST,
                                "--save", "", "--appendonly", "no", "--daemonize", "no",
                                "--dir", str(self.tmpdir), "--logfile", ""], logname)
            ep = Endpoint(name, HOST, port, proc.pid)
            if self._wait_ping(ep, proc, logname):
                return ep
            self.log(f"{name}: redis-server exited ({proc.returncode}) on port {port}; retrying")
        raise RuntimeError(f"could not start redis-server {name}: {self._tail(logname)}")

    def _start_twemproxy(self, attempts: int = 5) -> Endpoint:
        for attempt in range(attempts):
            port, stats_port = free_port(), free_port()
            conf = self.tmpdir / "nutcracker.yml"
            lines = [
                "dmc_peers:",
                f"  listen: {HOST}:{port}",
                "  hash: fnv1a_64",
                "  distribution: ketama",
                "  redis: true",
                "  server_connections: 1",
                "  auto_eject_hosts: false",
                *(f"  {k}: {v}" for k, v in self.twemproxy_extra.items()),
                "  servers:",
                *(f"   - {s.host}:{s.port}:1 {s.name}" for s in self.shards),
            ]
            conf.write_text("\n".join(lines) + "\n")
            logname = "nutcracker.log"
            # Foreground (no -d): the Popen pid is the serving process, and PDEATHSIG holds.
            proc = self._popen([NUTCRACKER, "-c", str(conf), "-o", str(self.tmpdir / logname),
                                "-p", str(self.tmpdir / "nutcracker.pid"),
                                "-s", str(stats_port), "-a", HOST], "nutcracker.stdout")
            ep = Endpoint("twemproxy", HOST, port, proc.pid)
            if self._wait_ping(ep, proc, logname):
                return ep
            self.log(f"nutcracker exited ({proc.returncode}); retrying: {self._tail(logname, 300)}")
        raise RuntimeError(f"could not start nutcracker: {self._tail(logname)}")

    def _start_predixy(self, threads: int) -> Endpoint:
        build = REPO.parent / "shared" / "peers" / "build-predixy.sh"
        binary = subprocess.run(["bash", str(build)], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1]
        template = (build.parent / "predixy.conf.in").read_text()
        port = free_port()
        groups = "".join(f"    Group s{i} {{\n        + {s.addr}\n    }}\n"
                         for i, s in enumerate(self.shards, 1))
        conf = self.tmpdir / f"predixy-{threads}t.conf"
        conf.write_text(template.replace("@BIND@", f"{HOST}:{port}")
                        .replace("@THREADS@", str(threads)).replace("@GROUPS@", groups))
        logname = f"predixy-{threads}t.log"
        proc = self._popen([binary, str(conf)], logname)
        ep = Endpoint(f"predixy-{threads}t", HOST, port, proc.pid)
        if not self._wait_ping(ep, proc, logname):
            raise RuntimeError(f"predixy did not start: {self._tail(logname)}")
        return ep

    def _start_dmcproxy(self, name: str = "dmcproxy", tree: Path = REPO,
                        extra=()) -> Endpoint:
        args = [sys.executable, "-m", "dmc.proxy", "--port", "0"]
        for s in self.shards:
            args += ["--shard", s.addr]
        args += [*self.dmc_args, *extra]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = self._popen(args, f"{name}.log", stdout_name=f"{name}.stdout", cwd=tree, env=env)
        # Its first stdout line is the contract: "dmcproxy listening on HOST:PORT over N shards"
        out = self.tmpdir / f"{name}.stdout"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            first = out.read_text(errors="replace").split("\n", 1)
            if len(first) == 2 and first[0].startswith("dmcproxy listening on "):
                port = int(first[0].split()[3].rsplit(":", 1)[1])
                return Endpoint(name, HOST, port, proc.pid)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start (rc={proc.poll()}): "
                           f"{self._tail(name + '.stdout')} {self._tail(name + '.log')}")


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Everything after -- is a command to run against the setup.")
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--dmc-arg", action="append", default=[],
                    help="extra dmcproxy argument (repeat), e.g. --dmc-arg=--max-clients=20000")
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    opts = ap.parse_args(argv)

    def log(msg):
        print(f"setup_peers: {msg}", file=sys.stderr, flush=True)

    with Peers(opts.shards, opts.dmc_arg, keep_tmp=opts.keep_tmp, log=log) as peers:
        if opts.json:
            print(json.dumps(peers.as_dict()), flush=True)
        else:
            for i, s in enumerate(peers.shards):
                print(f"shard{i:<6} {s.addr:<22} pid {s.pid}")
            for name, ep in peers.endpoints().items():
                print(f"{name:<11} {ep.addr:<22} pid {ep.pid}")
            print(f"SHARD_PIDS={','.join(map(str, peers.shard_pids))}")
            print("proxybench targets: " + " ".join(peers.proxybench_targets()), flush=True)
        if cmd:
            rc = subprocess.call(cmd, env={**os.environ, **peers.env()})
            return rc
        log("running; Ctrl-C or SIGTERM stops everything")
        try:
            while all(p.poll() is None for p in peers.procs):
                time.sleep(0.5)
            log("a process exited on its own: " + ", ".join(
                f"pid {p.pid} rc={p.returncode}" for p in peers.procs if p.poll() is not None))
            return 1
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
