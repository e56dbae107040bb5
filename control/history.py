"""The election history checker: reads every (time, node, term, role) observation that the nodes
of a run recorded and finds the one bug that must never ship, two masters at once.

An observation is a dict with `time` (a monotonic clock shared by the nodes: one machine, or a
simulation's clock), `node`, `term`, `role`, and optionally `lease_until` (for a master: until
when it may act) and `ccs_writable` (whether the node had made its CCS copy writable).

Two violations are reported:
- two nodes that believed themselves master in the same term;
- two nodes whose master intervals overlap in time. A node's interval starts at its first
  observation as a master holding a lease (or with a writable CCS) and ends at its next
  observation that is no longer one. A node that recorded nothing more, or whose next
  observation is that of a restarted process (`started`), was killed: the last lease it
  recorded bounds it. A lease interval never outlasts the last lease recorded in it either: a
  master acts only while its lease runs (Election.is_master), so one that was stopped (SIGSTOP)
  and records, on waking, that it is still master with a lease long past was not master in
  between.

cluster_wd appends observations as JSON lines (`run/history.jsonl` in the node's folder, when
history is on); `load` reads such files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Interval:
    node: int
    term: int
    start: float
    end: float
    kind: str        # "lease" or "ccs_writable"


def load(paths) -> list[dict]:
    observations = []
    for path in paths:
        with open(path) as f:
            observations.extend(json.loads(line) for line in f if line.strip())
    return observations


def load_dir(root: Path) -> list[dict]:
    return load(sorted(Path(root).glob("*/run/history.jsonl")))


def master_intervals(observations: list[dict]) -> list[Interval]:
    intervals = []
    by_node: dict[int, list[dict]] = {}
    for obs in sorted(observations, key=lambda o: o["time"]):
        by_node.setdefault(obs["node"], []).append(obs)
    for node, seq in by_node.items():
        for kind in ("lease", "ccs_writable"):
            intervals.extend(_intervals_of(node, seq, kind))
    return intervals


def _holds(obs: dict, kind: str) -> bool:
    if kind == "lease":
        return obs["role"] == "master" and obs.get("lease_until") is not None \
            and obs["lease_until"] > obs["time"]
    return bool(obs.get("ccs_writable"))


def _intervals_of(node: int, seq: list[dict], kind: str) -> list[Interval]:
    out = []
    start = term = lease = None
    for obs in seq:
        holding = _holds(obs, kind)
        if start is not None and (obs.get("started") or not holding or obs["term"] != term):
            end = obs["time"]
            if (obs.get("started") or kind == "lease") and lease is not None:
                end = min(end, max(lease, start))
            out.append(Interval(node, term, start, end, kind))
            start = None
        if holding and start is None:
            start, term = obs["time"], obs["term"]
        if holding and obs.get("lease_until") is not None:
            lease = obs["lease_until"]
    if start is not None:
        # Nothing recorded after this: the node died holding it. Its lease bounds it.
        end = lease if lease is not None and lease >= start else seq[-1]["time"]
        out.append(Interval(node, term, start, end, kind))
    return out


def violations(observations: list[dict]) -> list[str]:
    found = []
    masters_of_term: dict[int, set[int]] = {}
    for obs in observations:
        if obs["role"] == "master":
            masters_of_term.setdefault(obs["term"], set()).add(obs["node"])
    for term, nodes in sorted(masters_of_term.items()):
        if len(nodes) > 1:
            found.append(f"term {term}: nodes {sorted(nodes)} all believed themselves master")
    intervals = sorted(master_intervals(observations), key=lambda i: i.start)
    for i, a in enumerate(intervals):
        for b in intervals[i + 1:]:
            if b.start >= a.end:
                break
            if a.node != b.node and a.kind == b.kind:
                found.append(f"{a.kind} overlap: node {a.node} (term {a.term}) "
                             f"[{a.start:.3f}, {a.end:.3f}] and node {b.node} (term {b.term}) "
                             f"[{b.start:.3f}, {b.end:.3f}]")
    return found
