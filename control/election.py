"""Master election of cluster_wd: one node's side of a Raft-style leader election with leases.

This module owns the decision "is this node the master, for which term, until when". It does no
I/O of its own: messages come in through `Election.receive`, go out through the `send` callable
it is given, and its term and vote are kept by a `VoteStore`. `run()` drives its timers on Trio's
clock, so tests can run whole clusters of it under `trio.testing.MockClock`.

Rules (Raft's leader election, section 5.2 and 9.6 of the dissertation, plus leases):
- A term only grows. A node votes at most once per term, and its (term, vote) is stored durably
  before the vote leaves the node.
- A candidate first runs a pre-vote at term+1 without raising its own term, so a node cut off in a
  minority never inflates the cluster's term and does not unseat the master when it returns.
- **Freshness.** Votes (and pre-votes) go only to a candidate whose CCS copy is at least as far
  in CCS's history as the voter's own (`up_to_date`). A copy's place is its CCS position (term,
  index), Raft's (last log term, last log index), compared as a pair: kept in CCS itself
  (control/ccs.py POSITION), its term set by each master when its copy becomes writable, its
  index bumped by every acknowledged write, so it replicates with the data, survives a restart
  from the AOF, and orders copies of different replication histories. A write is acknowledged
  once a majority of the copies has it (ccs.commit); any majority of voters includes one of
  those, so a master elected by a majority has every acknowledged write. A node that cannot read
  its own copy's position neither votes nor campaigns. (Redis replication offsets do not order
  copies: a copy restarted from its AOF starts an offset of its own, and a replica whose master
  is gone reports -1 in ROLE -- a voter in that state once voted for a copy 100 s behind.)
- **Lease.** A node that heard a master within `leader_window` neither votes nor campaigns. A
  master's lease runs to `ts + lease_fraction * leader_window`, where `ts` is the send time of the
  newest heartbeat a majority has acknowledged: every member of that majority refuses to vote
  until at least `ts + leader_window`, so no other master can be elected before the lease is long
  over. A master steps down `stepdown_margin` before its lease ends unless a majority renews it.

It must never: grant two votes in one term, act as master without a majority's acknowledgement
inside the lease, or take back a term.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

MASTER = "master"
REPLICA = "replica"      # a follower: knows (or waits for) a master
CANDIDATE = "candidate"


@dataclass(frozen=True)
class Timings:
    heartbeat: float = 0.15        # a master sends heartbeats this often
    leader_window: float = 1.0     # after hearing a master, no vote and no campaign for this long
    election_jitter: float = 0.5   # election timeout: leader_window + uniform(0, jitter)
    retry_min: float = 0.2         # a candidate that got no majority tries again after
    retry_max: float = 0.5         #   uniform(retry_min, retry_max)
    lease_fraction: float = 0.6    # lease = ack'd heartbeat's send time + fraction * window
    stepdown_margin: float = 0.1   # a master steps down this long before its lease ends
    # The data path's fence (majority_until): this long after the node last knew it was on the
    # majority's side. Longer than the CCS lease, so that a master that steps down for a late
    # turn of a loaded machine does not stop its node's endpoints; shorter than the earliest
    # failover of the node's shards by the other side (its heartbeat key, written every
    # second with a 3 s TTL, expires >= 2 s after a partition; control/node_proxy.py).
    fence_window: float = 1.5


class VoteStore(Protocol):
    """Durable (term, voted_for). `save` returns only once the pair is safe from a crash."""
    def load(self) -> tuple[int, int | None]: ...
    def save(self, term: int, voted_for: int | None) -> None: ...


class MemoryVoteStore:
    def __init__(self, term: int = 0, voted_for: int | None = None):
        self.term, self.voted_for = term, voted_for

    def load(self):
        return self.term, self.voted_for

    def save(self, term, voted_for):
        self.term, self.voted_for = term, voted_for


def up_to_date(candidate, own: tuple[int, int] | None) -> bool:
    """May a voter whose CCS position is `own` vote for a candidate at `candidate` (as a vote
    request carries it: [term, index])? Only if the candidate's is at least the voter's, term
    first, then index (Raft's rule); never if the voter does not know its own (its copy cannot
    be read: it may hold writes the candidate lacks), nor for a malformed position."""
    if own is None or not isinstance(candidate, (list, tuple)) or len(candidate) != 2 \
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in candidate):
        return False
    return tuple(candidate) >= tuple(own)


@dataclass
class Observation:
    """What the node believes at one instant; recorded on every change and lease renewal."""
    time: float
    node: int
    term: int
    role: str
    master: int | None
    lease_until: float | None   # for a master: until when it may act as one
    started: bool = False       # the first observation of a (re)started process


@dataclass
class Election:
    uid: int
    members: dict[int, dict]                  # uid -> node info (address, ports, ...)
    send: Callable[[int, dict], None]         # (peer uid, message); never blocks, may drop
    store: VoteStore
    timings: Timings = field(default_factory=Timings)
    # this node's CCS position, (term, index); None: its copy cannot be read now
    ccs_position: Callable[[], tuple[int, int] | None] = lambda: (0, 0)
    members_version: int = 0
    on_change: Callable[[Observation], None] = lambda obs: None
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self):
        self.term, self.voted_for = self.store.load()
        self.role = REPLICA
        self.master: int | None = None
        self.lease_until: float | None = None
        now = trio.current_time()
        # A (re)started node behaves as if it had just heard a master: it may have acknowledged
        # one just before it went down, and its refusal to vote is what that master's lease
        # relies on.
        self.last_heard = now
        self.heard_master: float | None = None      # the last heartbeat of a master, accepted
        self.in_majority_at: float | None = None    # the last time it knew it was on its side
        self.deadline = now + self._election_timeout()
        self.next_heartbeat = now
        self.acks: dict[int, float] = {}
        self.votes: set[int] = set()
        self.prevoting = False
        self._wake = trio.Event()
        obs = self.observation()
        obs.started = True
        self.on_change(obs)

    # ---- queries -------------------------------------------------------------------------

    @property
    def majority(self) -> int:
        return len(self.members) // 2 + 1

    def is_master(self) -> bool:
        return self.role == MASTER and self.lease_until is not None \
            and trio.current_time() < self.lease_until

    def majority_until(self) -> float | None:
        """Until when this node's endpoints may serve: `fence_window` after the node last knew
        it was on the majority's side -- as a master, the send time of the newest heartbeat a
        majority acknowledged; as a replica, the last heartbeat of its master (a master sends
        them only while it holds a lease a majority renews, so an isolated replica, or one with
        an isolated master, runs out at most that long after it last heard it). Whatever the
        node's role now: a master that stepped down, or a replica that lost its master, keeps
        it until it runs out. The data path refuses commands when it has run out
        (control/node_proxy.py)."""
        if self.in_majority_at is None:
            return None
        return self.in_majority_at + self.timings.fence_window

    def observation(self) -> Observation:
        return Observation(trio.current_time(), self.uid, self.term, self.role, self.master,
                           self.lease_until if self.role == MASTER else None)

    # ---- timers --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self._next_deadline()):
                await self._wake.wait()
            self._wake = trio.Event()
            self.tick()

    def _next_deadline(self) -> float:
        if self.role == MASTER:
            return min(self.next_heartbeat, self._stepdown_at())
        return self.deadline

    def _stepdown_at(self) -> float:
        if self.lease_until is None:
            # elected but never acknowledged: give up after a window, do not linger as master
            return self.elected_at + self.timings.leader_window
        return self.lease_until - self.timings.stepdown_margin

    def tick(self) -> None:
        now = trio.current_time()
        if self.role == MASTER:
            if now >= self._stepdown_at():
                self._step_down(self.term)
                return
            if now >= self.next_heartbeat:
                self._send_heartbeats(now)
            return
        if now >= self.deadline and self.uid in self.members:
            if self.ccs_position() is None:
                # its copy unreadable: a candidate must be able to say how far it is
                self.deadline = now + self._retry_timeout()
                return
            self._start_prevote(now)

    def _election_timeout(self) -> float:
        return self.timings.leader_window + self.rng.uniform(0, self.timings.election_jitter)

    def _retry_timeout(self) -> float:
        return self.rng.uniform(self.timings.retry_min, self.timings.retry_max)

    def _leader_alive(self, now: float) -> bool:
        return self.role == MASTER or now - self.last_heard < self.timings.leader_window

    # ---- transitions ---------------------------------------------------------------------

    def _notify(self) -> None:
        self.on_change(self.observation())

    def _set_term(self, term: int, voted_for: int | None) -> None:
        self.store.save(term, voted_for)
        self.term, self.voted_for = term, voted_for

    def _step_down(self, term: int, master: int | None = None) -> None:
        """Become a replica in `term` (>= ours), following `master` if known."""
        now = trio.current_time()
        was = (self.role, self.term, self.master)
        if term > self.term:
            self._set_term(term, None)
        if was[0] == MASTER:
            # Keep refusing votes for a full window, as if a master had just been heard: the
            # fencing of this node's CCS copy must be done before anyone else can be elected.
            self.last_heard = now
        self.role = REPLICA
        self.master = master
        self.lease_until = None
        self.prevoting = False
        if master is None and was[0] != REPLICA:
            self.deadline = now + self._election_timeout()
        if was != (self.role, self.term, self.master):
            self._notify()
        self._wake.set()

    def _start_prevote(self, now: float) -> None:
        self.role = CANDIDATE
        self.master = None
        self.prevoting = True
        self.votes = {self.uid}
        self.deadline = now + self._retry_timeout()
        self._notify()
        self._broadcast({"type": "vote_request", "term": self.term + 1, "prevote": True,
                         "ccs_position": self._position()})
        self._check_votes()

    def _start_election(self) -> None:
        self._set_term(self.term + 1, self.uid)
        self.prevoting = False
        self.votes = {self.uid}
        self.deadline = trio.current_time() + self._retry_timeout()
        self._notify()
        self._broadcast({"type": "vote_request", "term": self.term, "prevote": False,
                         "ccs_position": self._position()})
        self._check_votes()

    def _position(self) -> list[int] | None:
        position = self.ccs_position()
        return None if position is None else list(position)

    def _check_votes(self) -> None:
        if len(self.votes & self.members.keys()) < self.majority:
            return
        if self.prevoting:
            self._start_election()
            return
        self.role = MASTER
        self.master = self.uid
        self.elected_at = trio.current_time()
        self.acks = {}
        self.lease_until = None     # not writable until a majority acknowledges a heartbeat
        self._notify()
        self._send_heartbeats(trio.current_time())

    def _send_heartbeats(self, now: float) -> None:
        self.next_heartbeat = now + self.timings.heartbeat
        self.acks[self.uid] = now
        self._broadcast({"type": "heartbeat", "term": self.term, "ts": now,
                         "members": self.members, "members_version": self.members_version})
        self._renew_lease()
        self._wake.set()

    def _renew_lease(self) -> None:
        acked = sorted((ts for uid, ts in self.acks.items() if uid in self.members), reverse=True)
        if len(acked) < self.majority:
            return
        confirmed = acked[self.majority - 1]
        if self.in_majority_at is None or confirmed > self.in_majority_at:
            self.in_majority_at = confirmed
        lease = confirmed + self.timings.lease_fraction * self.timings.leader_window
        if self.lease_until is None or lease > self.lease_until:
            self.lease_until = lease
            self._notify()

    def _broadcast(self, msg: dict) -> None:
        msg["from"] = self.uid
        for uid in self.members:
            if uid != self.uid:
                self.send(uid, msg)

    def _reply(self, to: int, msg: dict) -> None:
        msg["from"] = self.uid
        self.send(to, msg)

    # ---- membership ----------------------------------------------------------------------

    def set_members(self, members: dict[int, dict], version: int) -> None:
        """Adopt a membership (from the master's heartbeat, or this node as master)."""
        if version <= self.members_version and self.members:
            return
        self.members = dict(members)
        self.members_version = version
        if self.role == MASTER:
            if self.uid not in self.members:
                self._step_down(self.term)
                return
            self._renew_lease()
        self._notify()
        self._wake.set()

    # ---- messages ------------------------------------------------------------------------

    def receive(self, msg: dict) -> None:
        kind, term, sender = msg.get("type"), msg.get("term"), msg.get("from")
        if not isinstance(term, int) or not isinstance(sender, int) or sender == self.uid:
            return
        now = trio.current_time()
        if kind == "vote_request":
            self._on_vote_request(msg, term, sender, now)
            return
        # A pre-vote reply carries the candidate's prospective term, not the voter's.
        if term > self.term and not (kind == "vote_reply" and msg.get("prevote")):
            self._step_down(term)
        if kind == "heartbeat":
            self._on_heartbeat(msg, term, sender, now)
        elif kind == "heartbeat_ack":
            if self.role == MASTER and term == self.term and msg.get("ok"):
                ts = msg.get("ts")
                if isinstance(ts, (int, float)) and ts > self.acks.get(sender, float("-inf")):
                    self.acks[sender] = ts
                    self._renew_lease()
        elif kind == "vote_reply":
            if self.role != CANDIDATE or not msg.get("granted"):
                return
            if bool(msg.get("prevote")) != self.prevoting:
                return
            if term == (self.term + 1 if self.prevoting else self.term):
                self.votes.add(sender)
                self._check_votes()

    def _on_heartbeat(self, msg: dict, term: int, sender: int, now: float) -> None:
        if term < self.term:
            self._reply(sender, {"type": "heartbeat_ack", "term": self.term, "ok": False,
                                 "ts": msg.get("ts")})
            return
        if self.role == MASTER:
            # Same term, another master: impossible while votes are kept durably. Refuse it
            # rather than follow it, so the conflict shows up in the histories.
            return
        members, version = msg.get("members"), msg.get("members_version")
        if isinstance(members, dict) and isinstance(version, int) and version > self.members_version:
            self.set_members({int(k): v for k, v in members.items()}, version)
        self.last_heard = now
        self.heard_master = now
        self.in_majority_at = now
        self.deadline = now + self._election_timeout()
        if self.role != REPLICA or self.master != sender:
            self.role = REPLICA
            self.master = sender
            self.prevoting = False
            self._notify()
            self._wake.set()
        self._reply(sender, {"type": "heartbeat_ack", "term": self.term, "ok": True,
                             "ts": msg.get("ts")})

    def _on_vote_request(self, msg: dict, term: int, sender: int, now: float) -> None:
        prevote = bool(msg.get("prevote"))
        position = msg.get("ccs_position")
        if sender not in self.members:
            return
        # While a master is alive (or this node is one) vote requests are ignored outright,
        # without adopting their term: this is what keeps a master's lease valid, and keeps a
        # returning node from unseating a healthy master.
        if self._leader_alive(now):
            self._reply(sender, {"type": "vote_reply", "term": term if prevote else self.term,
                                 "prevote": prevote, "granted": False})
            return
        if not prevote and term > self.term:
            self._step_down(term)
        fresh = up_to_date(position, self.ccs_position())
        if prevote:
            granted = fresh and (term > self.term or (
                term == self.term and self.voted_for in (None, sender)))
            self._reply(sender, {"type": "vote_reply", "term": term, "prevote": True,
                                 "granted": granted})
            return
        granted = (term == self.term and fresh and self.voted_for in (None, sender))
        if granted:
            if self.voted_for != sender:
                self._set_term(self.term, sender)
            self.deadline = now + self._election_timeout()
        self._reply(sender, {"type": "vote_reply", "term": self.term, "prevote": False,
                             "granted": granted})
