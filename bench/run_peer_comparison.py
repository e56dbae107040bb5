#!/usr/bin/env python3
"""Peer comparison: redis-server direct vs twemproxy vs dmcproxy, over the same 3 shards.

    python3 bench/run_peer_comparison.py                       # full run (defaults of proxybench)
    ROUNDS=1 SCALE=0.05 python3 bench/run_peer_comparison.py   # smoke run
    python3 bench/run_peer_comparison.py --skip-rss --predixy 1,2 --tree dmc-base=../base
        # also predixy with 1 and 2 threads, and a dmcproxy of another checkout (a tree before
        # a change, built in place), all over the same shards, interleaved
    python3 bench/run_peer_comparison.py --skip-rss --tree dmc-scraped=$PWD --scrape dmc-scraped
        # metrics on vs off: a second dmcproxy of this tree whose counters are read every
        # second (INFO, all sections: what metrics_exporter and stats_archiver read of an
        # endpoint, and more), beside the plain one

Phase 1 (throughput/CPU): starts the peers with bench/setup_peers.py and runs the shared
    $(git rev-parse --show-toplevel)/../shared/bench/proxybench.sh \
        direct=127.0.0.1:P@PID twemproxy=127.0.0.1:P@PID dmcproxy=127.0.0.1:P@PID
with SHARD_PIDS set to the 3 shard pids. The environment is passed through unchanged, so
ROUNDS, SCALE, WORKLOADS (and any other proxybench knob: N_SG, BENCH_CPUS, QUIET, ...) apply.
RAW (proxybench's per-run CSV) defaults to the output file's name with .csv.

Phase 2 (memory): on a fresh set of peers (dmcproxy with --max-clients 20000, so that
10,000 connections fit), opens --idle-conns (10,000) idle TCP connections to twemproxy, then
to dmcproxy, one proxy at a time, and reports VmRSS (/proc/PID/status) before, with the
connections open (once the proxy has accepted all of them: counted in /proc/PID/fd), and after
closing them. The soft RLIMIT_NOFILE is raised to the hard limit before anything starts, so the
proxies inherit it.

Everything printed is also written (tee) to --out (default bench/out/peer-comparison-<time>.txt).
Exit status: non-zero if proxybench failed or a proxy did not accept every connection.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from setup_peers import Peers, ping, raise_nofile_limit, vm_rss_kib  # noqa: E402


class Tee:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def __call__(self, line: str = "") -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        self.f.write(line + "\n")

    def close(self) -> None:
        self.f.close()


def shared_bench_dir() -> Path:
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, check=True,
                             capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        top = str(HERE.parent)
    return (Path(top) / ".." / "shared" / "bench").resolve()


def cmd_out(args, cwd=None) -> str:
    try:
        p = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else ""
    except (OSError, subprocess.SubprocessError):
        return "?"


def header(out: Tee, args) -> None:
    git = cmd_out(["git", "rev-parse", "--short", "HEAD"], cwd=HERE)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                           capture_output=True, text=True).stdout.strip()
    out("# dmc peer comparison  " + time.strftime("%Y-%m-%d %H:%M:%S %z"))
    out(f"# git {git}{' (uncommitted changes)' if dirty else ''}; host {platform.node()}, "
        f"{os.cpu_count()} cpus, loadavg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out(f"# {cmd_out(['redis-server', '--version'])}")
    out(f"# {cmd_out(['nutcracker', '--version'])}; python {platform.python_version()}")
    env = " ".join(f"{k}={os.environ[k]}" for k in ("ROUNDS", "SCALE", "WORKLOADS", "N_SG", "N_SGP",
                                                      "N_MSET", "N_LAT", "RAND", "BENCH_CPUS",
                                                      "QUIET", "QUIET_MAX") if k in os.environ)
    out(f"# env: {env or '(proxybench defaults)'}; RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)}")
    out()


# --------------------------------------------------------------------------- phase 1

class Scraper:
    """Reads an endpoint's counters every `every` seconds (INFO, all sections), in a thread,
    as a metrics scraper would, and counts the reads."""

    def __init__(self, host: str, port: int, every: float):
        import threading
        self.address, self.every, self.reads = (host, port), every, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import redis
        r = redis.Redis(*self.address, socket_timeout=10)
        while not self.stopping.wait(self.every):
            try:
                r.info("everything")
                self.reads += 1
            except redis.RedisError:
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(15)


def run_proxybench(out: Tee, proxybench: Path, raw: Path, trees: dict[str, str],
                   predixy_threads: list[int], scrape: str | None = None,
                   scrape_every: float = 1.0) -> int:
    import contextlib
    with Peers(log=lambda m: out(f"# setup_peers: {m}"), trees=trees,
               predixy_threads=predixy_threads) as peers, contextlib.ExitStack() as stack:
        if scrape:
            target = peers.endpoints()[scrape]
            scraper = stack.enter_context(Scraper(target.host, target.port, scrape_every))
            stack.callback(lambda: out(f"# {scrape}: counters read {scraper.reads} times"))
        env = dict(os.environ)
        env["SHARD_PIDS"] = ",".join(map(str, peers.shard_pids))
        env.setdefault("RAW", str(raw))
        cmd = ["bash", str(proxybench), *peers.proxybench_targets()]
        out(f"$ SHARD_PIDS={env['SHARD_PIDS']} " + " ".join(
            f"{k}={env[k]}" for k in ("ROUNDS", "SCALE", "WORKLOADS") if k in env)
            + " " + " ".join(cmd[1:]))
        # Own session, so that on an interrupt the whole of it (redis-benchmark included)
        # can be stopped with one killpg; the terminal's Ctrl-C reaches us, not it.
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1,
                                start_new_session=True)
        try:
            for line in proc.stdout:
                out(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            kill_group(proc)
            raise
        dead = [p.pid for p in peers.procs if p.poll() is not None]
        if dead:
            out(f"!! processes died during the benchmark: {dead}")
            rc = rc or 1
    out(f"# proxybench exit status {rc}")
    out()
    return rc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM proc's process group (it leads its own session), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            # the leader is gone; make sure no member of its group is left either
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break


# --------------------------------------------------------------------------- phase 2

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_fds(pid: int, want: int, cmp, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = fd_count(pid)
        if cmp(n, want) or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def measure_idle_rss(out: Tee, n: int, ping_each: bool) -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        out(f"!! RLIMIT_NOFILE soft limit {soft} is too low for {n} connections")
        return 1
    failures = 0
    rows = []
    with Peers(dmc_args=["--max-clients", str(max(20000, n + 100))],
               log=lambda m: out(f"# setup_peers: {m}")) as peers:
        time.sleep(1.0)                              # let the fresh processes settle
        for ep in (peers.twemproxy, peers.dmcproxy):
            pid = ep.pid
            base_fds = fd_count(pid)
            rss0 = vm_rss_kib(pid)
            t0 = time.monotonic()
            socks = []
            try:
                for _ in range(n):
                    s = socket.create_connection((ep.host, ep.port), timeout=10)
                    socks.append(s)
                t_open = time.monotonic() - t0
                fds = wait_fds(pid, base_fds + n, lambda a, b: a >= b, 60)
                accepted = fds - base_fds
                time.sleep(1.0)
                rss1 = vm_rss_kib(pid)
                serving = ping(ep.host, ep.port, timeout=5)
                rss_ping = None
                if ping_each:
                    for s in socks:
                        s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    bad = 0
                    for s in socks:
                        buf = b""
                        while len(buf) < 7:
                            chunk = s.recv(7 - len(buf))
                            if not chunk:
                                break
                            buf += chunk
                        bad += buf != b"+PONG\r\n"
                    if bad:
                        out(f"!! {ep.name}: {bad} connections did not answer PING")
                        failures += 1
                    time.sleep(1.0)
                    rss_ping = vm_rss_kib(pid)
            finally:
                for s in socks:
                    s.close()
            wait_fds(pid, base_fds, lambda a, b: a <= b, 30)
            time.sleep(1.0)
            rss2 = vm_rss_kib(pid)
            ok = accepted >= n and serving
            failures += not ok
            rows.append((ep.name, pid, n, accepted, rss0, rss1, rss_ping, rss2, t_open, serving))
            out(f"# {ep.name}: opened {n} connections in {t_open:.1f}s, proxy holds {accepted}, "
                f"answers PING on a new connection: {serving}")
    out()
    out(f"== RSS with {n} idle client connections (VmRSS from /proc/PID/status; KiB; "
        f"per-conn = (with - before) / accepted)")
    hdr = (f"{'proxy':<10} {'conns':>6} {'accepted':>8} {'before':>10} {'with_conns':>11} "
           f"{'delta':>10} {'bytes/conn':>10} " + (f"{'+1 PING ea':>11} " if ping_each else "")
           + f"{'after_close':>11}")
    out(hdr)
    out("-" * len(hdr))
    for name, pid, n_, acc, r0, r1, rp, r2, _, _ in rows:
        per = (r1 - r0) * 1024 / acc if acc else float("nan")
        out(f"{name:<10} {n_:>6} {acc:>8} {r0:>10} {r1:>11} {r1 - r0:>10} {per:>10.0f} "
            + (f"{rp:>11} " if ping_each else "") + f"{r2:>11}")
    out()
    return 1 if failures else 0


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", type=Path, help="tee everything to this file "
                    "[bench/out/peer-comparison-<time>.txt]")
    ap.add_argument("--idle-conns", type=int, default=10000,
                    help="idle client connections per proxy for the RSS figure [10000]")
    ap.add_argument("--ping-each", action="store_true",
                    help="also measure RSS after one PING on every idle connection")
    ap.add_argument("--skip-bench", action="store_true", help="only the RSS phase")
    ap.add_argument("--skip-rss", action="store_true", help="only the proxybench phase")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                    help="also a dmcproxy imported from another checkout (built in place), "
                    "e.g. --tree dmc-base=/path/to/tree-before-the-change (repeat)")
    ap.add_argument("--predixy", default="", metavar="THREADS,...",
                    help="also predixy with these worker-thread counts, e.g. 1,2")
    ap.add_argument("--scrape", metavar="NAME", help="read this endpoint's counters (INFO) "
                    "every --scrape-every seconds while the benchmark runs (metrics on)")
    ap.add_argument("--scrape-every", type=float, default=1.0, metavar="SECONDS")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    predixy_threads = [int(t) for t in args.predixy.split(",") if t]

    # Before anything is started, so the proxies inherit the raised limit.
    raise_nofile_limit()
    # SIGTERM/SIGHUP unwind like Ctrl-C does (setup_peers stops its processes first, then
    # chains to these), so the proxybench process group is stopped too.
    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _exit)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = args.out or HERE / "out" / f"peer-comparison-{stamp}.txt"
    out = Tee(out_path)
    proxybench = shared_bench_dir() / "proxybench.sh"
    if not proxybench.exists():
        print(f"proxybench.sh not found at {proxybench}", file=sys.stderr)
        return 2
    for tool in ("redis-server", "redis-benchmark", "nutcracker"):
        if not shutil.which(tool) and not Path("/usr/sbin", tool).exists():
            print(f"{tool} not found", file=sys.stderr)
            return 2
    rc = 0
    try:
        header(out, args)
        if not args.skip_bench:
            rc |= run_proxybench(out, proxybench, out_path.with_suffix(".csv"), trees,
                                  predixy_threads, args.scrape, args.scrape_every)
        if not args.skip_rss:
            rc |= measure_idle_rss(out, args.idle_conns, args.ping_each)
        out(f"# output: {out_path}" + ("" if args.skip_bench else
            f"; raw per-run CSV: {os.environ.get('RAW', out_path.with_suffix('.csv'))}"))
    except KeyboardInterrupt:
        out("# interrupted; every process started was stopped")
        return 130
    finally:
        out.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
