#!/usr/bin/env python3
"""Redis 7.0.15's own TCL suite against one plain redis-server and a 3-shard dmcproxy, side by
side in one run, and the comparison written to bench/COMPAT.md (issue 12).

    python3 bench/compat.py                          # all 27 units, one target after the other
    python3 bench/compat.py --units "type/list multi" --isolate   # fresh targets per unit
    python3 bench/compat.py --cluster-port 12000     # also a cluster database's endpoint
    python3 bench/compat.py --cluster                # also a cluster of its own (column cluster)
    python3 bench/compat.py --from-logs bench/out/compat-20261201-1200   # re-render only

The suite is driven by the shared `run-redis-suite.sh` (external mode, its tags and its per-unit
time limit); each target gets its own unpacked copy of the suite, so runs never share its
tests/tmp. What this module owns: starting the targets (redis-server and 3 shards with `--save ""
--appendonly no`, dmcproxy from this checkout, on free ports; dmc.local's helpers), running the
suite against each, parsing each unit's log for `[ok]`, `[err]` and `[exception]` lines and the
test names, and the report: a per-unit table, totals, and every test that passes on redis-server
but not through dmc, grouped by cause (CAUSES below). Logs stay in bench/out/compat-TIME/
(git-ignored). Every process started here is stopped on exit, on Ctrl-C and on SIGTERM.

The report's hand-written triage (between the TRIAGE markers in COMPAT.md) is kept when the
report is written again.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + os.environ["PYTHONPATH"]
                                        if os.environ.get("PYTHONPATH") else "")

from dmc.local import start_proxy, start_redis_on_free_port  # noqa: E402
from dmc.processes import free_port, stop_process  # noqa: E402

# The shared suite (../shared/compat beside the checkout, or beside the worktrees' parent).
SHARED = next((d / "shared" / "compat" for d in REPO.parents if (d / "shared" / "compat").is_dir()),
              REPO.parent / "shared" / "compat")
RUNNER = Path(os.environ.get("COMPAT_RUNNER", SHARED / "run-redis-suite.sh"))
TARBALL = RUNNER.parent / "redis-7.0.15-tests.tar.gz"
UNITS = ("type/string type/incr type/list type/hash type/set type/zset type/stream "
         "type/stream-cgroups keyspace expire scan multi pubsub pubsubshard scripting functions "
         "bitops bitfield hyperloglog geo dump auth protocol info-command quit sort tracking").split()
TRIAGE_BEGIN, TRIAGE_END = "<!-- TRIAGE: kept by bench/compat.py -->", "<!-- /TRIAGE -->"

# Why a test that passes on redis-server does not pass through dmc: the first rule whose pattern
# is found in "TEST: WHY" (WHY: the test's error, or the exception that ended its unit before it
# ran) names the cause. `kind` says whether the difference is documented or a bug still open;
# COMPAT.md's triage says where each is in the code and how to fix it.
CAUSES = [
    # (SORT's BY/GET patterns that may leave the sorted key's slot: Redis Cluster's own words)
    # (and a BZMPOP over two keys of two shards, refused at once, so that the suite's wait for
    # it to block times out; its other BZMPOP, left blocked on myzset, then pops the first
    # element of the next test's myzset: ZRANDMEMBER never draws it)
    ("crossslot", r"CROSSSLOT|denied in Cluster mode when keys formed by the pattern may be in "
     r"different slots|^BZMPOP should not blocks on non key arguments - #10762: err: Timeout "
     r"waiting for blocked clients|^ZRANDMEMBER - listpack: err: Expected 'a b c' to be equal "
     r"to 'b c'", "documented",
     "CROSSSLOT: keys of one command on different shards (the multi-key issue's `sequential` "
     "policy closes it)"),
    # The suite's eviction test sets maxmemory just above used_memory and expects a volatile
    # key to be evicted when another key grows: the key that grows and the volatile one are on
    # different shards. The test fails before it sets maxmemory back, so the shards stay over
    # their limit under volatile-random: the unit's later writes (BLMOVE too, hence no blocked
    # client) get OOM, as one Redis would in that state.
    ("per-shard-eviction", r"^Tracking invalidation message of eviction keys should be before "
     r"response:|OOM command not allowed|^Unblocked BLMOVE gets notification after response: "
     r"err: Timeout waiting for blocked clients", "documented",
     "the memory limit is per shard (CONFIG SET maxmemory gives each shard its share): a shard "
     "evicts only its own keys; the suite's eviction test then leaves the shards over their "
     "limit, and the unit's later writes get OOM"),
    ("busy", r"BUSY Redis is busy|Expected 'PONG' to match 'BUSY", "open: issue 12",
     "a busy script: SCRIPT KILL / FUNCTION KILL cannot reach its shard, which stays BUSY"),
    # (the `scripting` unit's 108 after `Script ACL check` were this: the proxy closing an ACL
    # user's connections made the shard suspect, so the next unit's FLUSHALL waited out the hold)
    ("unavailable", r"is unavailable", "open",
     "a shard's connection lost and not back within the hold time (`-ERR shard ... is "
     "unavailable`)"),
    # A database with replication: every master shard has its replica online.
    ("replicated", r"^not enough good replicas: err: Expected an error matching 'NOREPLICAS",
     "documented", "the database has replication: CONFIG SET min-replicas-to-write 1 is met "
     "(each master shard has its replica; one redis-server alone has none)"),
    ("config-set", r"is managed by the cluster", "open: issue 12",
     "CONFIG SET refused, also when it asks for what the database applies (`save \"\"`)"),
    # (a readraw test after a failed blocking one reads the reply that test left unread)
    ("info", r"no blocked clients|Timeout waiting for blocked clients|only increase dirty|"
     r"^BZMPOP readraw", "open: issue 12", "INFO is one shard's (blocked_clients, "
     "rdb_changes_since_last_save ...), so the suite's waits on INFO fail"),
    ("acl-users", r"WRONGPASS", "open",
     "ACL users: ACL SETUSER reaches one shard, AUTH knows only `default`"),
    ("watch-in-multi", r"EXECABORT", "open",
     "WATCH inside MULTI aborts the transaction (Redis only refuses the WATCH)"),
    ("client-reply", r"(?i)CLIENT reply is not supported", "open: issue 12",
     "CLIENT REPLY refused"),
    ("client-tracking", r"(?i)CLIENT (tracking|caching|getredir|trackinginfo) is not supported",
     "open: issue 12", "CLIENT TRACKING (CACHING, GETREDIR, TRACKINGINFO) refused"),
    ("sort-pattern", r"SORT (BY|GET)[^:]*: err:", "open",
     "SORT BY/GET patterns read only the sorted key's shard: wrong order, missing values"),
    ("keyless-script", r"^(Script read key with expiration set|FUNCTION - test fcall_ro with "
     r"read only commands|Consistent eval error reporting):", "documented",
     "a script runs on the shard of the keys it declares (one shard when it declares none) and "
     "does not see keys of the others it touches undeclared"),
    ("suite-timeout", r"suite timeout", "load",
     "the suite's own 30 s progress limit (a fuzz test on a loaded machine)"),
    ("unit-timeout", r"timeout: the unit", "open",
     "the unit ran out of its time limit (waits that never end through dmc)"),
]


@dataclass
class Test:
    name: str
    status: str              # ok | err
    detail: str = ""         # err: the suite's explanation


@dataclass
class Unit:
    unit: str
    tests: list[Test] = field(default_factory=list)
    aborted: str = ""        # the exception (or time-out) that ended the unit early
    finished: bool = False

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.tests)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_OK = re.compile(r"^\[ok\]: (.*?)(?: \(\d+ ms\))?$")
_ERR = re.compile(r"^\[err\]: (.*?)(?: in tests/\S+)?$")


def parse_log(unit: str, text: str, timed_out: bool = False) -> Unit:
    """One unit's log as the suite writes it in external mode; timed_out: the runner's table
    says the unit was stopped at its time limit."""
    lines = _ANSI.sub("", text).splitlines()
    u = Unit(unit)
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _OK.match(line):
            u.tests.append(Test(m.group(1), "ok"))
        elif m := _ERR.match(line):
            detail = lines[i + 1].strip() if i + 1 < len(lines) else ""
            u.tests.append(Test(m.group(1), "err", detail))
        elif line.startswith("[exception]"):
            body = [line.split(":", 1)[1].strip()]
            for nxt in lines[i + 1:i + 12]:
                if nxt.startswith(("Killing still running", "[")):
                    break
                body.append(nxt.strip())
            u.aborted = " / ".join(b for b in body if b)[:600]
        elif line.startswith("[TIMEOUT]"):
            stuck = next((m.group(1) for nxt in lines[i + 1:i + 4]
                          if (m := re.search(r"\(IN PROGRESS\) (.*)", nxt))), "?")
            u.aborted = f"suite timeout: test '{stuck}' made no progress for 30 s"
        elif re.match(r"^\[\d+/\d+ done\]", line):
            u.finished = True
        i += 1
    if not u.finished and not u.aborted:
        last = u.tests[-1].name if u.tests else "(none)"
        if timed_out:
            u.aborted = f"timeout: the unit did not finish in its time limit; last test done: {last}"
        else:
            tail = [ln.strip() for ln in lines if ln.strip()][-3:]
            u.aborted = f"ended early after test {last}: " + " / ".join(tail)
    return u


# --------------------------------------------------------------------------- processes

class Processes:
    """Everything this run starts, stopped once, in reverse order, whatever happens."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        with self.lock:
            self.procs.append(proc)
        return proc

    def stop_tree(self, proc: subprocess.Popen) -> None:
        """proc and every process under it (the suite's `timeout` makes a process group of its
        own, so killing proc's group is not enough)."""
        tree = descendants(proc.pid)
        for pid in [proc.pid, *tree]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in tree:
            stop_process(pid, timeout=2.0)
        stop_process(proc)

    def stop_all(self) -> None:
        with self.lock:
            procs, self.procs = self.procs, []
        for proc in reversed(procs):
            self.stop_tree(proc)


def descendants(pid: int) -> list[int]:
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def unpack_suite(suite: Path, baseport: int) -> None:
    """The suite's tree in `suite`, its test server's ports moved to [baseport - 32, baseport):
    the suite finds a free port by trying it and binding it later, so two runs starting at
    once (this run's targets, or another user's run) would take the same one."""
    suite.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(TARBALL), "-C", str(suite)], check=True)
    helper = suite / "tests" / "test_helper.tcl"
    text = helper.read_text()
    assert "set ::baseport 21111" in text, "the suite's test_helper.tcl changed"
    helper.write_text(text.replace("set ::baseport 21111", f"set ::baseport {baseport}"))


def run_suite(procs: Processes, name: str, host: str, port: int, outdir: Path,
              units: list[str], unit_s: int, baseport: int) -> float:
    """run-redis-suite.sh against host:port, with its logs in outdir/name; seconds taken."""
    logs = outdir / name
    suite = outdir / f"suite-{name}"
    logs.mkdir(parents=True, exist_ok=True)
    unpack_suite(suite, baseport)
    env = dict(os.environ, UNITS=" ".join(units), SUITE=str(suite), UNIT_S=str(unit_s))
    start = time.monotonic()
    with open(outdir / f"{name}.table", "ab") as table:
        proc = procs.add(subprocess.Popen(["bash", str(RUNNER), host, str(port), str(logs)],
                                          stdout=table, stderr=subprocess.STDOUT, env=env,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        proc.wait()
    shutil.rmtree(suite, ignore_errors=True)
    return time.monotonic() - start


def start_targets(procs: Processes, workdir: Path, sequential: bool = False,
                  proxy: bool = True) -> dict[str, tuple[str, int]]:
    """One redis-server, and a dmcproxy over 3 more: {name: (host, port)}; sequential: also
    "dmc-seq", a dmcproxy with --multi-slot-commands sequential over 3 shards of its own;
    proxy False: neither dmcproxy (the cluster's database only)."""
    port, proc = start_redis_on_free_port(workdir / "redis-server")
    procs.add(proc)
    targets = {"redis": ("127.0.0.1", port)}
    local = ([("dmc", ())] + [("dmc-seq", ("--multi-slot-commands", "sequential"))] * sequential
             if proxy else [])
    for name, args in local:
        shards = []
        for _ in range(3):
            p, proc = start_redis_on_free_port(workdir / f"shards-{name}")
            procs.add(proc)
            shards.append(("127.0.0.1", p))
        proxy, served = start_proxy(shards, 0, workdir, *args)
        procs.add(proxy)
        targets[name] = ("127.0.0.1", served)
    return targets


class LocalClusterTarget:
    """A 3-node cluster of this checkout's own (control/, as scripts/start-local.sh makes it,
    on loopback addresses of its own so that it meets no other cluster on the machine) with
    start-local.sh's `default` database: 2 shards, replication on. Deleted by stop()."""

    def __init__(self, workdir: Path, policy: str = "refuse"):
        self.home = workdir / "cluster-home"
        self.address = f"127.0.{100 + os.getpid() % 100}.1"
        self.policy = policy

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([sys.executable, "-m", "control.cli", *args, "--home",
                               str(self.home)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"dmc {' '.join(args)}: exit {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}")
        return done.stdout

    def start(self) -> tuple[str, int]:
        # As `dmc cluster create --nodes 3`, with a longer wait for the election: the node
        # services start slowly on a loaded 2-core machine.
        from control.local_cluster import LocalCluster, loopback_addresses
        LocalCluster.create(self.home, loopback_addresses(3, self.address), timeout=240)
        deadline = time.monotonic() + 240
        while True:                     # the REST API starts after the election
            try:
                self.cli("db", "list", timeout=60)
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        port = free_port(self.address)
        self.cli("db", "create", "default", "--shards", "2", "--replication", "--port",
                 str(port), "--multi-slot-commands", self.policy)
        return self.address, port

    def stop(self) -> None:
        if (self.home / "cluster.json").exists():
            try:
                self.cli("cluster", "delete", timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"compat: deleting the cluster in {self.home} failed: {exc}",
                      file=sys.stderr)


# --------------------------------------------------------------------------- report

def load_units(logs: Path, units: list[str]) -> list[Unit]:
    """The units' logs in logs/, and the runner's table beside them (logs.table)."""
    table = Path(str(logs) + ".table")
    timed_out = {row.split()[0] for row in (table.read_text().splitlines() if table.exists()
                                            else []) if row.rstrip().endswith(" timeout")}
    out = []
    for u in units:
        f = logs / (u.replace("/", "_") + ".log")
        out.append(parse_log(u, f.read_text(errors="replace"), u in timed_out) if f.exists()
                   else Unit(u, aborted="no log"))
    return out


def classify(text: str) -> str:
    """The cause key of "TEST: WHY" (see CAUSES); "other" when no rule matches."""
    for key, pattern, _kind, _title in CAUSES:
        if re.search(pattern, text):
            return key
    return "other"


def lost_tests(ref: Unit, got: Unit) -> list[tuple[str, str]]:
    """(test, why) for each test that passed on the reference but not on got: its error, or the
    exception that ended got's unit before it ran."""
    passed = collections.Counter(t.name for t in got.tests if t.status == "ok")
    errors = collections.defaultdict(list)          # a name may be the name of several tests
    for t in got.tests:
        if t.status == "err":
            errors[t.name].append(t.detail)
    lost = []
    for t in ref.tests:
        if t.status != "ok":
            continue
        if passed[t.name] > 0:
            passed[t.name] -= 1
        elif errors[t.name]:
            lost.append((t.name, "err: " + errors[t.name].pop(0)))
        else:
            lost.append((t.name, "not run: " + (got.aborted or "unit ended early")))
    return lost


def _cell(u: Unit) -> str:
    return f"{u.count('ok')} / {u.count('err')} / {'yes' if u.aborted else ''}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(meta: dict, results: dict[str, list[Unit]], previous: str) -> str:
    names = list(results)
    ref = results["redis"]
    lines = ["# Redis 7.0.15's own test suite: one redis-server and dmc side by side", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ",
             f"Tree: `{meta['commit']}`; targets: "
             + ", ".join(f"{n} = {meta['targets'].get(n, '?')}" for n in names) + "  ",
             f"Run: {meta['mode']}; wall time "
             + ", ".join(f"{n} {meta['seconds'].get(n, 0):.0f} s" for n in names)
             + f"; unit time limit {meta['unit_s']} s. Logs: `{meta['logs']}` (not committed).",
             "", "Each cell: ok / err / aborted (an aborted unit stops at its first exception or "
             "its time limit; its later tests never run). Ratio: a target's ok over redis's.", ""]
    head = "| unit | " + " | ".join(f"{n} ok/err/aborted" for n in names) + " | " + \
        " | ".join(f"{n} ratio" for n in names[1:]) + " |"
    lines += [head, "|" + " --- |" * (1 + 2 * len(names) - 1)]
    for i, u in enumerate(ref):
        row = [u.unit] + [_cell(results[n][i]) for n in names]
        for n in names[1:]:
            ok = u.count("ok")
            row.append(f"{results[n][i].count('ok') / ok:.0%}" if ok else "-")
        lines.append("| " + " | ".join(row) + " |")
    tot = {n: (sum(u.count("ok") for u in us), sum(u.count("err") for u in us),
               sum(bool(u.aborted) for u in us)) for n, us in results.items()}
    row = ["**total**"] + [f"**{a} / {b} / {c}**" for a, b, c in tot.values()]
    row += [f"**{tot[n][0] / tot['redis'][0]:.1%}**" if tot["redis"][0] else "-"
            for n in names[1:]]
    lines += ["| " + " | ".join(row) + " |", ""]
    for n in names[1:]:
        lines.append(f"- **{n}**: {tot[n][0]} passed of redis-server's {tot['redis'][0]} "
                     f"({tot[n][0] / max(1, tot['redis'][0]):.1%}; the bar is 95%), "
                     f"{tot[n][1]} failed, {tot[n][2]} of {len(ref)} units aborted.")
    lines.append("")
    for n in names[1:]:
        lines += render_lost(n, ref, results[n])
    lines += render_aborts(results)
    triage = ""
    if TRIAGE_BEGIN in previous and TRIAGE_END in previous:
        triage = previous[previous.index(TRIAGE_BEGIN):previous.index(TRIAGE_END)
                          + len(TRIAGE_END)]
    lines += ["## Why: the causes, ranked, with where they are and how to fix them", "",
              triage or f"{TRIAGE_BEGIN}\n(not written yet)\n{TRIAGE_END}", ""]
    return "\n".join(lines)


def render_lost(name: str, ref: list[Unit], got: list[Unit]) -> list[str]:
    by_cause: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    for r, g in zip(ref, got):
        for test, why in lost_tests(r, g):
            by_cause[classify(f"{test}: {why}")].append((r.unit, test, why))
    total = sum(len(v) for v in by_cause.values())
    out = [f"## Passes on redis-server, not through {name}: {total} tests, by cause", ""]
    titles = {k: (kind, title) for k, _p, kind, title in CAUSES}
    titles["other"] = ("open", "other (see each test's error)")
    out += ["| cause | kind | tests |", "| --- | --- | --- |"]
    order = sorted(by_cause, key=lambda k: -len(by_cause[k]))
    for k in order:
        out.append(f"| {titles[k][1]} | {titles[k][0]} | {len(by_cause[k])} |")
    out.append("")
    for k in order:
        out += [f"### {titles[k][1]} ({len(by_cause[k])})", ""]
        # Failed tests one a line with their error; those never run, per unit on one line
        # (the exception that ended the unit is under "Aborted units").
        not_run: dict[str, list[str]] = collections.defaultdict(list)
        for unit, test, why in by_cause[k]:
            if why.startswith("not run: "):
                not_run[unit].append(test)
            else:
                out.append(f"- `{unit}` {_md(test)}: {_md(why[:240])}")
        for unit, tests in not_run.items():
            out.append(f"- `{unit}`, not run ({len(tests)}, the unit ended early): "
                       + "; ".join(_md(t) for t in tests))
        out.append("")
    return out


def render_aborts(results: dict[str, list[Unit]]) -> list[str]:
    out = ["## Aborted units: the exception", ""]
    for n, units in results.items():
        for u in units:
            if u.aborted:
                out.append(f"- {n} `{u.unit}` after {len(u.tests)} tests: {_md(u.aborted[:500])}")
    return out + [""]


def git_commit() -> str:
    """HEAD, and the last commit of the code under test (dmc/, setup.py), whose uncommitted
    changes are flagged: bench/ and tests/ changes do not change what runs."""
    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        code = git("log", "-1", "--format=%h", "--", "dmc", "setup.py")
        dirty = git("status", "--porcelain", "-uno", "--", "dmc", "setup.py")
        return (f"HEAD {git('rev-parse', '--short', 'HEAD')}, dmc/ as of {code}"
                + (" with uncommitted changes" if dirty else ""))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(outdir: Path, report: Path) -> None:
    meta = json.loads((outdir / "meta.json").read_text())
    results = {n: load_units(outdir / n, meta["units"]) for n in meta["names"]}
    previous = report.read_text() if report.exists() else ""
    report.write_text(render(meta, results, previous))
    (outdir / "results.json").write_text(json.dumps(
        {n: [asdict(u) for u in us] for n, us in results.items()}, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", help="space-separated units (default: all 27)")
    ap.add_argument("--concurrent", action="store_true",
                    help="all targets at once (default: one after the other; on 2 cores the "
                         "suite's fuzz tests then time out, see bench/README.md)")
    ap.add_argument("--isolate", action="store_true",
                    help="fresh targets for each unit: each unit's own failures, no cascades")
    ap.add_argument("--sequential", action="store_true",
                    help="also run against a 3-shard dmcproxy with --multi-slot-commands "
                         "sequential (column dmc-seq)")
    ap.add_argument("--cluster", action="store_true",
                    help="also run against a database of a 3-node cluster started here "
                         "(start-local.sh's `default`: 2 shards, replication on; column cluster)")
    ap.add_argument("--no-proxy", action="store_true",
                    help="no local dmcproxy targets (with --cluster: redis and the cluster only)")
    ap.add_argument("--cluster-policy", choices=["refuse", "sequential"], default="refuse",
                    help="the cluster database's multi_slot_commands [refuse]")
    ap.add_argument("--cluster-port", type=int, help="also run against this database endpoint")
    ap.add_argument("--cluster-host", default="127.0.0.1")
    ap.add_argument("--unit-timeout", type=int, default=120, help="seconds per unit [120]")
    ap.add_argument("--report", type=Path, default=REPO / "bench" / "COMPAT.md")
    ap.add_argument("--from-logs", type=Path, help="only write the report from an earlier run")
    args = ap.parse_args(argv)
    if args.from_logs:
        write_report(args.from_logs, args.report)
        print(f"wrote {args.report}")
        return 0
    if not RUNNER.exists() or not TARBALL.exists():
        print(f"compat: the suite runner is missing: {RUNNER}", file=sys.stderr)
        return 1
    units = args.units.split() if args.units else UNITS
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = REPO / "bench" / "out" / f"compat-{stamp}"
    outdir.mkdir(parents=True)
    procs = Processes()
    cluster = LocalClusterTarget(outdir, args.cluster_policy) if args.cluster else None
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))        # through the finally below
    try:
        targets = start_targets(procs, outdir, args.sequential, not args.no_proxy)
        if cluster is not None:
            targets["cluster"] = cluster.start()
        if args.cluster_port:
            targets["cluster"] = (args.cluster_host, args.cluster_port)
        meta = {"command": "python3 bench/compat.py " + " ".join(map(shlex.quote, argv or
                                                                      sys.argv[1:])),
                "date": datetime.datetime.now().isoformat(timespec="minutes"),
                "commit": git_commit(), "names": list(targets), "units": units,
                "targets": {n: f"{h}:{p}" for n, (h, p) in targets.items()},
                "mode": ("concurrent" if args.concurrent else "sequential")
                + (", fresh targets for each unit" if args.isolate else ""),
                "unit_s": args.unit_timeout, "seconds": collections.Counter(),
                "logs": str(outdir.relative_to(REPO))}
        if "dmc" in meta["targets"]:
            meta["targets"]["dmc"] += " (dmcproxy over 3 redis-server shards)"
        if "dmc-seq" in meta["targets"]:
            meta["targets"]["dmc-seq"] += " (the same, --multi-slot-commands sequential)"
        if cluster is not None:
            meta["targets"]["cluster"] += (" (database `default` of a 3-node cluster: 2 shards, "
                                           f"replication on, {args.cluster_policy})")
        print(f"compat: {meta['mode']} run of {len(units)} units against "
              + ", ".join(f"{n} {a}" for n, a in meta["targets"].items()) + f"; logs {outdir}",
              flush=True)
        # Each target's suite gets test-server ports of its own (32 of them), away from the
        # suite's default 21079-21110 that another user's plain run takes.
        base = 23000 + 64 * (os.getpid() % 100)
        batches = [[u] for u in units] if args.isolate else [units]
        for n, batch in enumerate(batches):
            if n:
                procs.stop_all()
                targets.update(start_targets(procs, outdir, args.sequential, not args.no_proxy))

            def one(name: str) -> None:
                host, port = targets[name]
                meta["seconds"][name] += run_suite(procs, name, host, port, outdir, batch,
                                                   args.unit_timeout,
                                                   base + 32 * (1 + list(targets).index(name)))

            if not args.concurrent:
                for name in targets:
                    one(name)
            else:
                threads = [threading.Thread(target=one, args=(n,), daemon=True)
                           for n in targets]
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.5)
            print(f"compat: {' '.join(batch) if args.isolate else 'all units'} done: "
                  + ", ".join(f"{n} {s:.0f} s" for n, s in meta["seconds"].items()), flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
        if cluster is not None:
            cluster.stop()
    (outdir / "meta.json").write_text(json.dumps(meta, indent=1))
    write_report(outdir, args.report)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
