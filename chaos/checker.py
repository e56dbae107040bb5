"""The history checker: reads what a chaos run recorded and says what the cluster promised and
did not keep. Pure functions of the records; no cluster is needed to run it.

A history is JSON lines, each a record with a `type`:

- `op`: one client operation. `process` (a client's number, or "final" for the reads made after
  the faults ended), `db` (the database's name), `node` (the uid of the node whose endpoint it
  was sent to), `durable` (the database has
  `appendfsync-always` and every write was followed by `WAIT 1`: acknowledged means on a
  replica's fsynced AOF), `op`, `key`, `value` (what it wrote), `result` (what it returned),
  `invoke` and `complete` (time.monotonic(), one clock for every process of the machine;
  `complete` is null if the outcome is unknown), `outcome`: `ok`, `fail` (it certainly did not
  happen: refused before it was applied) or `unknown` (it may have happened: a timeout, a lost
  connection, a WAIT that reached no replica).
  Operations: `write` (SET of a key written once, then checked by a final `get`), `set` / `get`
  (a register), `incr` (a counter; `result` the value INCR returned), `rpush` (an element
  pushed on a list), `lrange` (a list's elements), `txn_set` (MULTI, SET of both keys `key`+":a"
  and `key`+":b" of one slot, EXEC) and `txn_get` (MULTI, GET both, EXEC; `result` the pair):
  the pair is checked as one register whose value is the pair.
- `fault`: `kind`, `target`, `start`, `end` (the nemesis injected it, and undid it at `end`);
  a network fault also names its `minority`: the nodes cut off from the majority.
- `shard_map`: `time`, `bdb`, `version`, `paused`, `masters` ([{uid, slots: [[a, b], ...]}]): the map the
  proxies serve (polled from CCS), and `shard_roles` (same shape) the shards CCS says are
  masters.

What is reported (`check`):
- `acknowledged_lost`: durable writes acknowledged and gone (a `write` whose final read does not
  return it, a counter below its acknowledged increments, a list without an acknowledged
  element). Must be 0.
- `plain_lost`: the same for non-durable databases, counted; such a write may be lost if it was
  acknowledged within `ASYNC_WINDOW` seconds before a fault began (Redis replicates
  asynchronously: what a master had not yet sent when it died is gone). A loss outside that
  window is counted in `plain_lost_outside_window`.
- `linearizability_violations`: registers (durable databases) whose history is not
  linearizable; a stale read and a read of a value not yet written are both such.
- `counter_violations`, `list_violations`: final values that contradict the acknowledged
  operations (below the acknowledged increments or above all that were tried; two INCRs that
  returned one value; a list element lost, or present twice).
- `minority_writes_acknowledged`: writes acknowledged through a node on the minority side of a
  partition more than `FENCE_BOUND` seconds after the cut and before the heal -- the fence
  (dmc/fastpath/fence.pxi) answers them -READONLY once the node's lease has run out. Must be 0.
- `two_masters`: the election history's violations (control/history.py) plus shard maps with a
  slot owned by two masters, or two different maps published under one version.
- `availability`: fraction of operations that succeeded, the longest time without a successful
  completion, and both per fault kind (operations invoked while a fault of that kind was on,
  or in the `AFTERMATH` seconds after it ended: a kill is an instant, its effect is not).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from chaos.linearizable import Operation, check_register

ASYNC_WINDOW = 1.0      # s before a fault in which an unreplicated plain write may be lost
AFTERMATH = 3.0         # s after a fault ends that count as its time for availability
# s from a cut to the last write a minority node may acknowledge: its lease (fence_window, 1.5 s
# after it last knew it was on the majority's side; each endpoint's loop checks the deadline
# for every command) and a write already sent when the fence went up (as tests/test_fencing.py
# bounds it). Under 2 s: the majority cannot fail the node's shards over before its heartbeat
# key expires, >= 2 s after the cut.
FENCE_BOUND = 1.9
WRITES = ("write", "set", "incr", "rpush", "txn_set")


def load(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ops_of(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r.get("type", "op") == "op"]


def faults_of(records: Iterable[dict]) -> list[dict]:
    return sorted((r for r in records if r.get("type") == "fault"), key=lambda f: f["start"])


# ---- writes acknowledged and lost --------------------------------------------------------------

def _final(ops: list[dict], op: str) -> dict[tuple[str, str], object]:
    """(db, key) -> the result of the last successful final read of that kind."""
    found = {}
    for o in sorted(ops, key=lambda o: o["invoke"]):
        if o["process"] == "final" and o["op"] == op and o["outcome"] == "ok":
            found[(o["db"], o["key"])] = o["result"]
    return found


def _within_window(acked: float, faults: list[dict]) -> bool:
    """Acknowledged at most ASYNC_WINDOW before a fault began, or while one was on (a stopped
    replica receives nothing, so a later failover may lose what its master took meanwhile)."""
    return any(f["start"] - ASYNC_WINDOW <= acked <= max(f.get("end") or f["start"], f["start"])
               for f in faults)


def lost_writes(ops: list[dict], faults: list[dict]) -> dict:
    """Acknowledged `write`s whose final read does not return them."""
    final = _final(ops, "get")
    durable, plain, outside, unread = [], [], [], 0
    for o in ops:
        if o["op"] != "write" or o["outcome"] != "ok":
            continue
        where = (o["db"], o["key"])
        if where not in final:
            unread += 1
            continue
        if final[where] == o["value"]:
            continue
        lost = {"db": o["db"], "key": o["key"], "value": o["value"], "found": final[where],
                "acknowledged": o["complete"]}
        if o["durable"]:
            durable.append(lost)
        else:
            plain.append(lost)
            if not _within_window(o["complete"], faults):
                outside.append(lost)
    return {"durable": durable, "plain": plain, "plain_outside_window": outside,
            "not_read_back": unread}


def minority_writes(ops: list[dict], faults: list[dict]) -> list[dict]:
    """Writes acknowledged through a minority node after its lease ran out, before the heal."""
    found = []
    for f in faults:
        minority = set(f.get("minority") or ())
        if not minority:
            continue
        fenced_from = f["start"] + FENCE_BOUND
        for o in ops:
            if o["op"] in WRITES and o["outcome"] == "ok" and o.get("node") in minority \
                    and fenced_from < o["complete"] < f["end"]:
                found.append({"db": o["db"], "node": o["node"], "op": o["op"], "key": o["key"],
                              "value": o["value"], "fault": f"{f['kind']} {f['target']}",
                              "after_cut": round(o["complete"] - f["start"], 3)})
    return found


# ---- registers ----------------------------------------------------------------------------------

def register_histories(ops: list[dict]) -> dict[tuple[str, str], list[Operation]]:
    """Per (db, key) of a durable database: its register operations, for the search. A key
    that is SET (or a pair that is written by a transaction) is a register; the final `get`s
    of other keys (written once, counters) are not; a failed operation, and a read without a
    result, constrain nothing."""
    registers = {(o["db"], o["key"]) for o in ops if o["op"] in ("set", "txn_set")}
    histories: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for o in ops:
        if not o["durable"] or o["op"] not in ("set", "get", "txn_set", "txn_get") \
                or (o["db"], o["key"]) not in registers:
            continue
        if o["outcome"] == "fail":
            continue
        reads = o["op"] in ("get", "txn_get")
        if reads and o["outcome"] != "ok":
            continue
        if o["op"] == "txn_set":
            value = (o["value"], o["value"])
        elif o["op"] == "txn_get":
            value = tuple(o["result"]) if o["result"] is not None else None
            if value == (None, None):
                value = None
        else:
            value = o["result"] if reads else o["value"]
        complete = o["complete"] if o["outcome"] == "ok" else math.inf
        histories[(o["db"], o["key"])].append(
            Operation("read" if reads else "write", value, o["invoke"], complete, o))
    return histories


def linearizability(ops: list[dict], budget: int | None = None) -> dict:
    violations, undecided, keys = [], [], 0
    for (db, key), history in sorted(register_histories(ops).items()):
        keys += 1
        result = check_register(history, **({"budget": budget} if budget else {}))
        if result.ok is None:
            undecided.append({"db": db, "key": key, "ops": result.ops})
        elif not result.ok:
            stuck = result.stuck_at.ref if result.stuck_at else None
            violations.append({
                "db": db, "key": key, "ops": result.ops,
                "stuck_at": stuck and {k: stuck.get(k) for k in
                                       ("process", "op", "value", "result", "invoke", "complete")},
                "linearized_before": len(result.longest_prefix or [])})
    return {"keys": keys, "violations": violations, "undecided": undecided}


# ---- counters and lists -----------------------------------------------------------------------

def _by_key(ops: list[dict], op: str) -> list[tuple[tuple[str, str], list[dict]]]:
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for o in ops:
        if o["op"] == op:
            by_key[(o["db"], o["key"])].append(o)
    return sorted(by_key.items())


def counters(ops: list[dict]) -> list[dict]:
    final = _final(ops, "get")
    found = []
    for (db, key), incrs in _by_key(ops, "incr"):
        acked = sum(o["outcome"] == "ok" for o in incrs)
        tried = sum(o["outcome"] != "fail" for o in incrs)
        durable = incrs[0]["durable"]
        returned = Counter(o["result"] for o in incrs if o["outcome"] == "ok")
        repeated = sorted(v for v, n in returned.items() if n > 1)
        value = final.get((db, key))
        value = int(value) if value is not None else None
        problems = []
        if value is not None and value < acked:
            problems.append(f"final value {value} < {acked} acknowledged increments")
        if value is not None and value > tried:
            problems.append(f"final value {value} > {tried} increments tried")
        if repeated:
            problems.append(f"INCR returned {repeated[:5]} more than once")
        if problems:
            found.append({"db": db, "key": key, "durable": durable, "problems": problems,
                          "lost": max(0, acked - value) if value is not None else 0})
    return found


def lists(ops: list[dict]) -> list[dict]:
    final = _final(ops, "lrange")
    found = []
    for (db, key), pushes in _by_key(ops, "rpush"):
        elements = final.get((db, key))
        if elements is None:
            continue
        present = Counter(elements)
        acked = {o["value"] for o in pushes if o["outcome"] == "ok"}
        tried = {o["value"] for o in pushes if o["outcome"] != "fail"}
        lost = sorted(acked - set(present))
        duplicated = sorted(e for e, n in present.items() if n > 1)
        unknown = sorted(set(present) - tried)
        if lost or duplicated or unknown:
            found.append({"db": db, "key": key, "durable": pushes[0]["durable"], "lost": lost,
                          "duplicated": duplicated, "never_pushed": unknown})
    return found


# ---- two masters ---------------------------------------------------------------------------------

def _overlap(a, b) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _slot_conflicts(masters: list[dict]) -> list[str]:
    out = []
    for i, m in enumerate(masters):
        for n in masters[i + 1:]:
            if m["uid"] != n["uid"] and any(_overlap(a, b) for a in m["slots"]
                                            for b in n["slots"]):
                out.append(f"shards {m['uid']} and {n['uid']}")
    return out


def shard_masters(records: Iterable[dict]) -> list[str]:
    """A slot with two masters in one map (or in CCS's shard roles at one moment, unless the
    map is paused), or one map version published with two contents."""
    found = []
    seen: dict[tuple[int, int], list] = {}
    for r in records:
        if r.get("type") != "shard_map":
            continue
        # While the map is paused the proxies send nothing: a switch may have promoted the new
        # master in CCS before the map that names it is published.
        for what in ("masters",) if r.get("paused") else ("masters", "shard_roles"):
            for conflict in _slot_conflicts(r.get(what) or []):
                found.append(f"bdb {r['bdb']} at {r['time']:.3f}: {conflict} both master "
                             f"of a slot ({'map' if what == 'masters' else 'CCS roles'} "
                             f"version {r['version']})")
        content = sorted((m["uid"], [list(s) for s in m["slots"]]) for m in r["masters"])
        earlier = seen.setdefault((r["bdb"], r["version"]), content)
        if earlier != content:
            found.append(f"bdb {r['bdb']}: map version {r['version']} published twice with "
                         f"different masters")
    return found


# ---- availability ----------------------------------------------------------------------------------

def _longest_gap(ops: list[dict], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a successful completion."""
    times = sorted(o["complete"] for o in ops if o["outcome"] == "ok"
                   and start <= o["complete"] <= end)
    edges = [start, *times, end]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def availability(ops: list[dict], faults: list[dict]) -> dict:
    ops = [o for o in ops if o["process"] != "final"]
    if not ops:
        return {"operations": 0, "fraction_ok": None, "longest_gap": None, "by_fault": {}}
    start = min(o["invoke"] for o in ops)
    end = max(o["complete"] or o["invoke"] for o in ops)

    def summary(chosen, windows):
        ok = sum(o["outcome"] == "ok" for o in chosen)
        gap = max((_longest_gap(ops, a, b) for a, b in windows), default=0.0)
        return {"operations": len(chosen), "fraction_ok": ok / len(chosen) if chosen else None,
                "longest_gap": round(gap, 3)}

    by_kind: dict[str, list[dict]] = defaultdict(list)
    for f in faults:
        by_kind[f["kind"]].append(f)
    by_fault = {}
    for kind, fs in sorted(by_kind.items()):
        windows = [(f["start"], max(f.get("end") or f["start"], f["start"]) + AFTERMATH)
                   for f in fs]
        chosen = [o for o in ops if any(a <= o["invoke"] <= b for a, b in windows)]
        by_fault[kind] = {"faults": len(fs), **summary(chosen, windows)}
    return {**summary(ops, [(start, end)]), "by_fault": by_fault}


# ---- everything ----------------------------------------------------------------------------------

def check(records: list[dict], election: list[dict] | None = None,
          budget: int | None = None) -> dict:
    """The report of a history (and of the election observations of the same run)."""
    from control import history

    ops, faults = ops_of(records), faults_of(records)
    lost = lost_writes(ops, faults)
    lin = linearizability(ops, budget)
    counter_problems, list_problems = counters(ops), lists(ops)
    masters = [f"cluster: {v}" for v in history.violations(election or [])]
    masters += shard_masters(records)
    fenced = minority_writes(ops, faults)
    durable_lost = (len(lost["durable"])
                    + sum(c["lost"] for c in counter_problems if c["durable"])
                    + sum(len(x["lost"]) for x in list_problems if x["durable"]))
    plain_lost = (len(lost["plain"])
                  + sum(c["lost"] for c in counter_problems if not c["durable"])
                  + sum(len(x["lost"]) for x in list_problems if not x["durable"]))
    by_op = Counter((o["op"], o["outcome"]) for o in ops if o["process"] != "final")
    operations = {"total": sum(by_op.values()),
                  **{op: {k: n for (o, k), n in sorted(by_op.items()) if o == op}
                     for op in sorted({o for o, _ in by_op})}}
    return {
        "operations": operations,
        "faults": faults,
        "acknowledged_lost": durable_lost,
        "plain_lost": plain_lost,
        "plain_lost_outside_window": len(lost["plain_outside_window"]),
        "async_window": ASYNC_WINDOW,
        "linearizability_violations": len(lin["violations"]),
        "linearizability_undecided": len(lin["undecided"]),
        "registers_checked": lin["keys"],
        "counter_violations": len(counter_problems),
        "list_violations": len(list_problems),
        "minority_writes_acknowledged": len(fenced),
        "fence_bound": FENCE_BOUND,
        "two_masters": len(masters),
        "availability": availability(ops, faults),
        "details": {"lost_writes": lost, "linearizability": lin, "counters": counter_problems,
                    "lists": list_problems, "two_masters": masters,
                    "minority_writes": fenced},
    }
