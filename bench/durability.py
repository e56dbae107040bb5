#!/usr/bin/env python3
"""Durability benchmark: is disk latency kept out of the write path when replicas write the AOF?

Redis Enterprise's claim (DESIGN.md principle 4): with replication, master shards do no disk I/O
and their replicas write the AOF, so even `appendfsync-always` costs the writer nothing. This
script puts that next to a plain `redis-server --appendonly yes --appendfsync always` on the same
disk, under the same client load, in interleaved rounds.

Endpoints (each one `redis-benchmark -t set -c C -P P -r KEYSPACE --csv` per round, in the order
below, round after round):

  dmc-always   a database of a real local dmc cluster (3 nodes on 127.0.0.x, every service under
               its supervisord): replication, data_persistence aof, aof_policy appendfsync-always,
               1 shard (--shards 1,2 adds one database per count); load through the dmcproxy
               endpoint on the node of its (first) master shard
  dmc-none     the same database shape without persistence: what the proxy and replication cost,
               with no disk anywhere (--no-dmc-none leaves it out)
  redis-always one redis-server, appendonly yes, appendfsync always, its folder next to the
               cluster's (same file system)
  redis-none   one redis-server without persistence: the ceiling (--no-ceiling leaves it out)

Per run it records throughput and redis-benchmark's latency percentiles (the time to the
acknowledgement), the CPU of the server processes (/proc/PID/stat), the bytes each of them sent to
the block layer (/proc/PID/io write_bytes: the master shard should show none), and how long a
write takes to be known on disk: a probe client on the endpoint, every 20 ms, times a SET on
redis-always, and a SET then `WAIT 1 1000` on a dmc database (answered once the replica, which
fsyncs its AOF before it writes any reply, acknowledged it). Before the rounds it
measures the disk's own write+fdatasync latency in the same folder, and checks with CONFIG GET
that the master shards have appendonly no and the replicas appendonly yes with appendfsync
always. --disk-noise KIB adds a neighbour on the same disk (a process rewriting KIB-sized blocks
with fdatasync after each) for every endpoint alike: a slower disk, to see whose write latency
follows it.

    python3 bench/durability.py                       # 5 rounds of 5 s per endpoint
    python3 bench/durability.py --rounds 3 --duration 3 --shards 1,2 --pipeline 1

Everything it starts (the cluster, the redis-servers, redis-benchmark) is stopped on the way out,
on Ctrl-C and on SIGTERM too. Output is also written to --out (bench/out/durability-<time>.txt).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from setup_peers import ping, raise_nofile_limit

from control.local_cluster import LocalCluster, loopback_addresses
from dmc.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"
TICK = os.sysconf("SC_CLK_TCK")


class Tee:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


# ---- what is measured --------------------------------------------------------------------------

@dataclass
class ShardPair:
    """A master shard and its replica, reached directly (not through the proxy)."""
    master: tuple[str, int]
    replica: tuple[str, int]


@dataclass
class Target:
    name: str
    host: str
    port: int
    pids: dict[str, int]                       # role ("proxy", "master:3", ...) -> pid
    pairs: list[ShardPair] = field(default_factory=list)
    durable: bool = False                      # a write is on disk somewhere once acknowledged
    runs: list[dict] = field(default_factory=list)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK        # utime + stime


def io_counts(pid: int) -> tuple[int, int]:
    """(bytes sent to the block layer, write syscalls: files and sockets) of a process."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(":") for line in f)
    return int(fields["write_bytes"]), int(fields["syscw"])


def busy_seconds() -> float:
    """CPU time spent by the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK          # minus idle and iowait


def wait_quiet(max_wait: float, threshold: float = 0.5, exclude: tuple[int, ...] = ()) -> float:
    """Wait (up to max_wait s) for a second in which the machine used less than `threshold`
    cores, not counting the processes `exclude` (the disk neighbour): other work (a test
    suite, say) must not land on one endpoint's run only. Returns the time waited."""
    def used() -> float:
        return busy_seconds() - sum(cpu_seconds(pid) for pid in exclude)
    start = time.monotonic()
    while time.monotonic() - start < max_wait:
        busy = used()
        time.sleep(1)
        if used() - busy < threshold:
            break
    return time.monotonic() - start


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fsync_probe(folder: Path, count: int = 300) -> tuple[float, float]:
    """p50 and p99 (ms) of writing 64 bytes to a file and fdatasync-ing it, in `folder`."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    took = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 64)
            os.fdatasync(fd)
            took.append((time.perf_counter() - start) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return took[len(took) // 2], took[int(len(took) * 0.99)]


# A disk neighbour: rewrites the same 64 blocks of a file, fdatasync after each, forever.
DISK_NOISE = """
import os, sys
path, size = sys.argv[1], int(sys.argv[2]) << 10
fd, block, i = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), b"n" * size, 0
while True:
    os.pwrite(fd, block, (i % 64) * size)
    os.fdatasync(fd)
    i += 1
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


class DurabilityProbe(threading.Thread):
    """How long until a client knows its write is on disk, sampled every 20 ms while a run goes
    on, by a client of its own on the endpoint: on redis-always a SET is on disk when it is
    answered; on a dmc database the probe sends SET and then `WAIT 1 1000` through the proxy.
    Redis 7.0 flushes and fsyncs the AOF in beforeSleep before it writes any reply, its
    REPLCONF ACK to the master included, so WAIT returns once the replica's AOF holds the
    write. Each sample is the SET's round trip plus the WAIT's."""

    def __init__(self, addrs: list[tuple[str, int]], wait: bool):
        super().__init__(daemon=True)
        self.clients = [redis.Redis(*a, socket_timeout=5) for a in addrs]
        self.wait = wait
        self.samples: list[float] = []          # ms
        self.acked: list[float] = []            # ms: the SET's round trip alone
        self.timeouts = 0
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.done.wait(0.02):
            for client in self.clients:
                n += 1
                try:
                    start = time.perf_counter()
                    client.set("durability:probe", n)
                    acked = time.perf_counter()
                    if self.wait and client.execute_command("WAIT", 1, 1000) < 1:
                        self.timeouts += 1
                        continue
                    done = time.perf_counter()
                except (redis.RedisError, OSError):
                    self.timeouts += 1
                    continue
                self.acked.append((acked - start) * 1e3)
                self.samples.append((done - start) * 1e3)


CSV_LINE = re.compile(r'^"SET","([^"]+)","([^"]+)","([^"]+)","([^"]+)","([^"]+)","([^"]+)","([^"]+)"')


def run_load(target: Target, requests: int, args, exclude: tuple[int, ...] = ()) -> dict:
    """One redis-benchmark run against `target`, with the servers' CPU and disk writes
    (`exclude`: processes whose CPU is not counted as the machine's other work)."""
    pids = target.pids
    excluded0 = sum(cpu_seconds(pid) for pid in exclude)
    cpu0 = {role: cpu_seconds(pid) for role, pid in pids.items()}
    io0 = {role: io_counts(pid) for role, pid in pids.items()}
    sampler = None
    if target.pairs:
        sampler = DurabilityProbe([(target.host, target.port)], wait=True)
    elif target.durable:
        sampler = DurabilityProbe([(target.host, target.port)], wait=False)
    cmd = [REDIS_BENCHMARK, "-h", target.host, "-p", str(target.port), "-t", "set",
           "-n", str(requests), "-c", str(args.clients), "-P", str(args.pipeline),
           "-r", str(args.keyspace), "-d", str(args.value_size), "--csv"]
    client0, busy0, wall0 = children_cpu(), busy_seconds(), time.monotonic()
    # In this process group: a Ctrl-C reaches it too.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sampler:
        sampler.start()
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if sampler:
            sampler.done.set()
    wall = time.monotonic() - wall0
    busy, client = busy_seconds() - busy0, children_cpu() - client0
    busy -= sum(cpu_seconds(pid) for pid in exclude) - excluded0
    m = next((CSV_LINE.match(line) for line in out.splitlines() if CSV_LINE.match(line)), None)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"redis-benchmark against {target.name} failed "
                           f"(exit {proc.returncode}): {err.strip() or out.strip()}")
    rps, avg, lo, p50, p95, p99, hi = (float(x) for x in m.groups())
    result = {"rps": rps, "avg": avg, "min": lo, "p50": p50, "p95": p95, "p99": p99, "max": hi,
              "requests": requests, "pipeline": args.pipeline, "wall": wall,
              "client_cpu": client,
              "cpu": {role: cpu_seconds(pid) - cpu0[role] for role, pid in pids.items()},
              "disk": {role: io_counts(pid)[0] - io0[role][0] for role, pid in pids.items()},
              "syscw": {role: io_counts(pid)[1] - io0[role][1] for role, pid in pids.items()}}
    result["other_cpu"] = busy - client - sum(result["cpu"].values())
    if sampler:
        sampler.join()
        result.update(durable_p50=percentile(sampler.samples, 0.5),
                      durable_p99=percentile(sampler.samples, 0.99),
                      durable_max=max(sampler.samples, default=float("nan")),
                      probe_acked_p50=percentile(sampler.acked, 0.5),
                      probes=len(sampler.samples), probe_timeouts=sampler.timeouts)
    return result


# ---- the endpoints -----------------------------------------------------------------------------

def start_redis(folder: Path, persistent: bool) -> tuple[subprocess.Popen, int]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent \
        else ["--appendonly", "no"]
    with open(folder / "redis.log", "ab") as log:
        proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
             "--save", "", *persistence, "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while not ping("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server in {folder} did not start (see redis.log)")
        time.sleep(0.05)
    return proc, port


class Rest:
    """The master node's REST API, as a user calls it."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.auth = cluster.admin_login()

    def _base(self) -> str:
        node = self.cluster.nodes[self.cluster.wait_for_master()]
        return f"http://{node.address}:{node.rest_port}"

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = httpx.request(method, self._base() + path, auth=self.auth,
                                      timeout=10, **kw)
                if reply.status_code < 500:
                    return reply
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"REST {method} {path}: no answer")
            time.sleep(0.2)

    def get(self, path: str):
        reply = self.call("GET", path)
        reply.raise_for_status()
        return reply.json()


def port_free_on_all(addresses: list[str]) -> int:
    """A port free on every node's address (each node's dmcproxy listens on its own)."""
    while True:
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue


def create_db(rest: Rest, cluster: LocalCluster, name: str, count: int, persistent: bool,
              out: Tee) -> Target:
    body = {"name": name, "shards_count": count, "replication": True,
            "port": port_free_on_all([c.address for c in cluster.nodes.values()]),
            "memory_size": 1 << 30}
    if persistent:
        body.update(data_persistence="aof", aof_policy="appendfsync-always")
    reply = rest.call("POST", "/v1/bdbs", json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"POST /v1/bdbs {body}: {reply.status_code} {reply.text}")
    bdb = reply.json()
    deadline = time.monotonic() + 120
    while (action := rest.get(f"/v1/actions/{bdb['action_uid']}"))["status"] \
            not in ("completed", "failed"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"creating {name}: action not done within 120 s")
        time.sleep(0.2)
    if action["status"] != "completed":
        raise RuntimeError(f"creating {name} failed: {action.get('error')}")
    nodes = {n["uid"]: n for n in rest.get("/v1/nodes")}
    shards = [s for s in rest.get("/v1/shards") if s["bdb_uid"] == bdb["uid"]]
    masters = sorted((s for s in shards if s["role"] == "master"), key=lambda s: s["uid"])
    pairs, pids = [], {}
    for master in masters:
        replica = next(s for s in shards if s.get("master_uid") == master["uid"])
        m_addr = (nodes[master["node_uid"]]["addr"], master["port"])
        r_addr = (nodes[replica["node_uid"]]["addr"], replica["port"])
        m_pid = cluster.node_pids(master["node_uid"])[f"shard:{master['uid']}"]
        r_pid = cluster.node_pids(replica["node_uid"])[f"shard:{replica['uid']}"]
        pairs.append(ShardPair(m_addr, r_addr))
        pids[f"master:{master['uid']}"] = m_pid
        pids[f"replica:{replica['uid']}"] = r_pid
    # The load goes to the endpoint on the node of the first master shard (no extra hop there).
    node = masters[0]["node_uid"]
    pids["proxy"] = cluster.node_pids(node)["dmcproxy"]
    host = nodes[node]["addr"]
    deadline = time.monotonic() + 30
    while True:
        try:
            r = redis.Redis(host, bdb["port"], socket_timeout=2)
            r.set("durability:probe", "1")
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    target = Target(name, host, bdb["port"], pids, pairs)
    wait_replicas_online(target)
    out(f"# {name}: bdb {bdb['uid']} port {bdb['port']}, {count} shard(s), load through "
        f"node {node}'s dmcproxy {host}:{bdb['port']}")
    return target


def wait_replicas_online(target: Target, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for pair in target.pairs:
        while True:
            replica = redis.Redis(*pair.replica, socket_timeout=2)
            if replica.info("replication").get("master_link_status") == "up" and \
                    not replica.info("persistence").get("aof_rewrite_in_progress"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name}: replica {pair.replica} not in sync")
            time.sleep(0.1)


def check_persistence(target: Target, persistent: bool, out: Tee) -> bool:
    """CONFIG GET on every shard: the master never persists; the replica does, if asked to."""
    ok = True
    for pair in target.pairs:
        for role, addr in (("master", pair.master), ("replica", pair.replica)):
            shard = redis.Redis(*addr, socket_timeout=2, decode_responses=True)
            conf = shard.config_get("append*")
            save = shard.config_get("save")["save"]
            info = shard.info("persistence")
            want_aof = "yes" if persistent and role == "replica" else "no"
            good = conf["appendonly"] == want_aof and save == "" and \
                (want_aof == "no" or conf["appendfsync"] == "always")
            ok &= good
            out(f"#   {role:7s} {addr[0]}:{addr[1]}: appendonly {conf['appendonly']}, "
                f"appendfsync {conf['appendfsync']}, save '{save}', "
                f"aof_enabled {info['aof_enabled']}  {'as expected' if good else '!! NOT AS EXPECTED'}")
    return ok


# ---- the report --------------------------------------------------------------------------------

def med(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def summarize(targets: list[Target], reference: str, out: Tee) -> None:
    by_name = {t.name: t for t in targets}
    ref = by_name.get(reference)
    out()
    out(f"{'endpoint':16s} {'ops/s med [min-max]':>27s} {'ratio vs ' + reference:>24s} "
        f"{'avg ms':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'max ms':>7s}")
    for t in targets:
        rps = [r["rps"] for r in t.runs]
        ratio = ""
        if ref is not None and ref.runs:
            ratios = [a["rps"] / b["rps"] for a, b in zip(t.runs, ref.runs)]
            ratio = f"{med(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
        out(f"{t.name:16s} {med(rps) / 1e3:9.1f}k [{min(rps) / 1e3:.1f}k-{max(rps) / 1e3:.1f}k]"
            f"{ratio:>26s} {med(r['avg'] for r in t.runs):7.3f} "
            f"{med(r['p50'] for r in t.runs):7.3f} {med(r['p95'] for r in t.runs):7.3f} "
            f"{med(r['p99'] for r in t.runs):7.3f} {med(r['max'] for r in t.runs):7.3f}")
    out()
    out("CPU per request (medians, us): the endpoint's server processes by role, the client "
        "(redis-benchmark), everything else on the machine (not the disk neighbour); disk: bytes to "
        "the block layer per "
        "request (/proc/PID/io write_bytes)")
    for t in targets:
        roles = sorted({role.split(":")[0] for role in t.pids})
        cpu = {role: med(sum(v for k, v in r["cpu"].items() if k.split(":")[0] == role)
                         / r["requests"] * 1e6 for r in t.runs) for role in roles}
        disk = {role: med(sum(v for k, v in r["disk"].items() if k.split(":")[0] == role)
                          / r["requests"] for r in t.runs) for role in roles}
        out(f"{t.name:16s} " + "  ".join(f"{role} {cpu[role]:.2f}" for role in roles)
            + f"  client {med(r['client_cpu'] / r['requests'] * 1e6 for r in t.runs):.2f}"
            + f"  other {med(r['other_cpu'] / r['requests'] * 1e6 for r in t.runs):.2f}"
            + "  | disk B/req " + "  ".join(f"{role} {disk[role]:.1f}" for role in roles))
    out()
    out("Writes per AOF flush (one write() + fdatasync per event-loop turn with appendfsync "
        "always; from write syscalls: a replica makes few others, a redis-server also writes "
        "one reply per request at P1)")
    for t in targets:
        for role in t.pids:
            if role.startswith("replica") and t.name.startswith("dmc-always"):
                flushes = [r["syscw"][role] for r in t.runs]
            elif role == "server" and t.name == "redis-always":
                flushes = [r["syscw"][role] - r["requests"] // r["pipeline"]
                           for r in t.runs]
            else:
                continue
            per_flush = med(r["requests"] / max(1, f) for r, f in zip(t.runs, flushes))
            out(f"{t.name:16s} {role:10s} ~{per_flush:.1f} writes per flush")
    probed = [t for t in targets if t.runs and "durable_p50" in t.runs[0]]
    if probed:
        out()
        out("Until a client knows its write is on disk (a probe client on the endpoint, every "
            "20 ms during the runs: redis-always SET answered; dmc SET then WAIT 1 answered "
            "through the proxy, i.e. the replica's AOF has it); medians of the runs' figures, ms")
        for t in probed:
            out(f"{t.name:16s} p50 {med(r['durable_p50'] for r in t.runs):.3f}  "
                f"p99 {med(r['durable_p99'] for r in t.runs):.3f}  "
                f"max {med(r['durable_max'] for r in t.runs):.3f}  (the probe's SET alone: "
                f"p50 {med(r['probe_acked_p50'] for r in t.runs):.3f}; "
                f"{sum(r['probes'] for r in t.runs)} probes, "
                f"{sum(r['probe_timeouts'] for r in t.runs)} unanswered"
                + (" or without a replica's ack within 1 s)" if t.pairs else ")"))


# ---- main --------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0,
                    help="seconds per run: -n is sized from a warm-up run of each endpoint")
    ap.add_argument("--requests", type=int, default=0,
                    help="a fixed -n for every run instead of --duration")
    ap.add_argument("--clients", "-c", type=int, default=50)
    ap.add_argument("--pipeline", "-P", type=int, default=1)
    ap.add_argument("--keyspace", "-r", type=int, default=100_000)
    ap.add_argument("--value-size", "-d", type=int, default=3)
    ap.add_argument("--shards", default="1",
                    help="comma-separated shard counts: one appendfsync-always database each")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--first-address", default="127.0.0.101")
    ap.add_argument("--no-dmc-none", action="store_true",
                    help="leave out the dmc database without persistence")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="leave out the redis-server without persistence")
    ap.add_argument("--disk-noise", type=int, default=0, metavar="KIB",
                    help="also run a neighbour on the disk that writes KIB-sized blocks with "
                    "fdatasync after each, all the time (0: none)")
    ap.add_argument("--quiet-max", type=float, default=20.0,
                    help="before each run, wait up to this many seconds for a quiet second "
                    "(under 0.5 cores busy; the idle cluster uses about 0.1)")
    ap.add_argument("--dir", default=None, help="parent folder of the run (default: $TMPDIR)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    shard_counts = [int(x) for x in args.shards.split(",")]

    out = Tee(Path(args.out) if args.out else
              HERE / "out" / f"durability-{time.strftime('%Y%m%d-%H%M%S')}.txt")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    raise_nofile_limit()

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, check=False,
                         capture_output=True, text=True).stdout.strip()
    out(f"# dmc durability benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    out(f"# git {git}; {platform.node()}, {os.cpu_count()} cpus, loadavg "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        + subprocess.run([REDIS_SERVER, "--version"], capture_output=True, check=False,
                         text=True).stdout.strip())
    out(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")

    work = Path(tempfile.mkdtemp(prefix="dmc-durability-", dir=args.dir))
    servers: list[subprocess.Popen] = []
    cluster = None
    try:
        p50, p99 = fsync_probe(work)
        dev = os.stat(work).st_dev
        out(f"# folder {work} (device {os.major(dev)}:{os.minor(dev)}); write(64 B)+fdatasync "
            f"there: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        neighbour: tuple[int, ...] = ()
        if args.disk_noise:
            servers.append(subprocess.Popen(
                [sys.executable, "-c", DISK_NOISE, str(work / "disk-noise"),
                 str(args.disk_noise)], start_new_session=True))
            neighbour = (servers[-1].pid,)
            time.sleep(1)
            p50, p99 = fsync_probe(work)
            out(f"# disk neighbour writing {args.disk_noise} KiB blocks with fdatasync "
                f"(pid {servers[-1].pid}): write+fdatasync now p50 {p50:.3f} ms, "
                f"p99 {p99:.3f} ms")
        t0 = time.monotonic()
        cluster = LocalCluster.create(work / "cluster",
                                      loopback_addresses(args.nodes, args.first_address))
        rest = Rest(cluster)
        out(f"# cluster of {args.nodes} nodes up in {time.monotonic() - t0:.1f} s "
            f"({', '.join(c.address for c in cluster.nodes.values())})")
        targets: list[Target] = []
        persistent_ok = True
        for count in shard_counts:
            name = "dmc-always" if count == 1 and len(shard_counts) == 1 \
                else f"dmc-always-{count}sh"
            t = create_db(rest, cluster, name, count, True, out)
            persistent_ok &= check_persistence(t, True, out)
            targets.append(t)
        if not args.no_dmc_none:
            t = create_db(rest, cluster, "dmc-none", shard_counts[0], False, out)
            check_persistence(t, False, out)
            targets.append(t)
        proc, port = start_redis(work / "redis-always", True)
        servers.append(proc)
        targets.append(Target("redis-always", "127.0.0.1", port, {"server": proc.pid},
                              durable=True))
        conf = redis.Redis("127.0.0.1", port, decode_responses=True).config_get("append*")
        out(f"# redis-always 127.0.0.1:{port} in {work / 'redis-always'}: appendonly "
            f"{conf['appendonly']}, appendfsync {conf['appendfsync']}")
        if not args.no_ceiling:
            proc, port = start_redis(work / "redis-none", False)
            servers.append(proc)
            targets.append(Target("redis-none", "127.0.0.1", port, {"server": proc.pid}))
            out(f"# redis-none 127.0.0.1:{port}: no persistence")
        if not persistent_ok:
            out("!! the shards' persistence is not as the design says (see above)")

        # The cluster's own idle CPU (control plane: heartbeats, gossip, watchdogs).
        busy0, neighbour0 = busy_seconds(), sum(cpu_seconds(p) for p in neighbour)
        time.sleep(3)
        spent = sum(cpu_seconds(p) for p in neighbour) - neighbour0
        out(f"# machine busy before the load (the idle cluster's control plane, and anything "
            f"else running): {(busy_seconds() - busy0 - spent) / 3:.2f} cores"
            + (f"; the disk neighbour: {spent / 3:.2f} cores" if neighbour else ""))

        # Warm-up: fills the keyspace and sizes -n for --duration.
        sizes = {}
        for t in targets:
            r = run_load(t, 20_000 if not args.requests else min(args.requests, 20_000), args,
                         neighbour)
            sizes[t.name] = args.requests or max(10_000, int(r["rps"] * args.duration))
            out(f"# warm-up {t.name:14s} {r['rps'] / 1e3:7.1f}k ops/s -> -n {sizes[t.name]}")
        out(f"# load: redis-benchmark -t set -c {args.clients} -P {args.pipeline} "
            f"-r {args.keyspace} -d {args.value_size} --csv, {args.rounds} interleaved rounds")
        out()
        for rnd in range(1, args.rounds + 1):
            for t in targets:
                waited = wait_quiet(args.quiet_max, exclude=neighbour)
                r = run_load(t, sizes[t.name], args, neighbour)
                t.runs.append(r)
                extra = f"  (waited {waited:.0f} s for a quiet machine)" if waited > 1.5 else ""
                if "durable_p50" in r:
                    extra += (f"  on disk after p50 {r['durable_p50']:.3f} p99 "
                              f"{r['durable_p99']:.3f} ms")
                cpu = sum(r["cpu"].values())
                out(f"round {rnd} {t.name:14s} {r['rps'] / 1e3:7.1f}k ops/s  p50 {r['p50']:.3f}"
                    f"  p99 {r['p99']:.3f}  max {r['max']:.3f} ms  server cpu "
                    f"{cpu / r['wall']:.2f} cores{extra}")
        summarize(targets, "redis-always", out)
        for t in targets:
            for pair in t.pairs:
                info = [redis.Redis(*a).info("persistence") for a in (pair.master, pair.replica)]
                out(f"# {t.name}: master aof_enabled {info[0]['aof_enabled']}, "
                    f"aof_rewrites {info[0].get('aof_rewrites', '?')}; replica aof_enabled "
                    f"{info[1]['aof_enabled']}, aof size {info[1].get('aof_current_size', 0)} B, "
                    f"aof_rewrites {info[1].get('aof_rewrites', '?')}")
            if t.name == "redis-always":
                info = redis.Redis(t.host, t.port).info("persistence")
                out(f"# redis-always: aof size {info.get('aof_current_size', 0)} B, "
                    f"aof_rewrites {info.get('aof_rewrites', '?')}")
        out(f"# written to {out.path}")
        return 0 if persistent_ok else 1
    except KeyboardInterrupt:
        out("# interrupted")
        return 130
    finally:
        # A second Ctrl-C or SIGTERM (timeout(1) sends its own, for one) must not cut the
        # cleanup short and leave a cluster running.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if cluster is not None:
            cluster.delete()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
