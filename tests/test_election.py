"""The election of cluster_wd, whole clusters of it simulated under Trio's MockClock: message
delays, partitions, crashes and restarts, with every observation fed to the history checker.
(The same code under real processes and real partitions is in test_cluster.py.)"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from control import history
from control.election import MASTER, Election, MemoryVoteStore, Timings, up_to_date


class SimCluster:
    """N Election objects wired by an in-memory network with delays, drops and partitions."""

    def __init__(self, nursery, n: int, seed: int, timings: Timings | None = None):
        self.nursery = nursery
        self.rng = random.Random(seed)
        self.timings = timings or Timings()
        self.members = {uid: {"uid": uid} for uid in range(1, n + 1)}
        self.stores = {uid: MemoryVoteStore() for uid in self.members}
        self.nodes: dict[int, Election] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.groups: dict[int, int] = {uid: 0 for uid in self.members}
        self.drop_rate = 0.0
        self.drop_kinds: set[str] = set()
        self.observations: list[dict] = []
        # each node's CCS position, (term, index); None: its copy cannot be read
        self.positions: dict[int, tuple[int, int] | None] = {uid: (0, 0) for uid in self.members}
        for uid in self.members:
            self.start(uid)

    def start(self, uid: int) -> None:
        node = Election(uid, dict(self.members), lambda to, m, uid=uid: self._send(uid, to, m),
                        self.stores[uid], self.timings, rng=random.Random(self.rng.random()),
                        ccs_position=lambda uid=uid: self.positions[uid],
                        on_change=lambda o: self.observations.append(vars(o).copy()))
        self.nodes[uid] = node
        scope = trio.CancelScope()
        self.scopes[uid] = scope

        async def run():
            with scope:
                await node.run()
        self.nursery.start_soon(run)

    def kill(self, uid: int) -> None:
        self.scopes.pop(uid).cancel()
        del self.nodes[uid]

    def partition(self, *groups) -> None:
        self.groups = {uid: -1 - uid for uid in self.members}
        for g, group in enumerate(groups):
            for uid in group:
                self.groups[uid] = g

    def heal(self) -> None:
        self.groups = {uid: 0 for uid in self.members}

    def _send(self, frm: int, to: int, msg: dict) -> None:
        if self.groups[frm] != self.groups[to] or self.rng.random() < self.drop_rate \
                or msg["type"] in self.drop_kinds:
            return
        delay = self.rng.uniform(0.0005, 0.02)

        async def deliver():
            await trio.sleep(delay)
            node = self.nodes.get(to)
            # A message in flight when the link is cut is lost too.
            if node is not None and self.groups[frm] == self.groups[to]:
                node.receive(dict(msg))
        self.nursery.start_soon(deliver)

    def masters(self) -> list[Election]:
        return [n for n in self.nodes.values() if n.is_master()]

    async def wait_single_master(self, among=None, timeout: float = 20.0) -> Election:
        with trio.fail_after(timeout):
            while True:
                ms = [m for m in self.masters() if among is None or m.uid in among]
                if len(ms) == 1:
                    return ms[0]
                await trio.sleep(0.05)

    def check_history(self) -> None:
        assert history.violations(self.observations) == []


def run_sim(body, n: int, seed: int = 1):
    async def main():
        async with trio.open_nursery() as nursery:
            sim = SimCluster(nursery, n, seed)
            await body(sim)
            sim.check_history()
            nursery.cancel_scope.cancel()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("n", [1, 3, 5])
def test_a_cluster_elects_exactly_one_master_and_keeps_it(n):
    async def body(sim):
        first = await sim.wait_single_master()
        await trio.sleep(30)
        assert [m.uid for m in sim.masters()] == [first.uid]
        assert {node.master for node in sim.nodes.values()} == {first.uid}
        assert len({node.term for node in sim.nodes.values()}) == 1
    run_sim(body, n)


@pytest.mark.parametrize("seed", range(5))
def test_a_killed_master_is_replaced_within_the_lease_and_election_time(seed):
    async def body(sim):
        old = await sim.wait_single_master()
        await trio.sleep(2)
        killed_at = trio.current_time()
        sim.kill(old.uid)
        new = await sim.wait_single_master()
        took = trio.current_time() - killed_at
        assert new.uid != old.uid and new.term > old.term
        # leader window + jitter + at most a few candidate retries
        assert took < 3.0, took
        sim.start(old.uid)
        await trio.sleep(5)
        assert sim.nodes[old.uid].master == new.uid
        assert [m.uid for m in sim.masters()] == [new.uid]
    run_sim(body, 3, seed)


def test_minority_side_has_no_master_and_majority_keeps_or_elects_one():
    async def body(sim):
        old = await sim.wait_single_master()
        minority = [old.uid, old.uid % 5 + 1]
        majority = [u for u in sim.members if u not in minority]
        sim.partition(minority, majority)
        await trio.sleep(3)
        assert [m.uid for m in sim.masters()] == [(await sim.wait_single_master(majority)).uid]
        assert not any(sim.nodes[u].role == MASTER for u in minority)
        minority_terms = {sim.nodes[u].term for u in minority}
        await trio.sleep(20)
        # pre-vote: the cut-off side does not inflate its term while it cannot win
        assert {sim.nodes[u].term for u in minority} == minority_terms
        sim.heal()
        await trio.sleep(5)
        master = await sim.wait_single_master()
        assert master.uid in majority
        assert master.term == max(node.term for node in sim.nodes.values())
        assert {node.master for node in sim.nodes.values()} == {master.uid}
    run_sim(body, 5)


@pytest.mark.parametrize("seed", range(8))
def test_chaos_never_yields_two_masters(seed):
    """Random partitions, lossy links, crashes and restarts for ten simulated minutes; the
    history of every node must show one master per term and no overlapping leases."""
    async def body(sim):
        rng = random.Random(seed)
        sim.drop_rate = 0.05
        uids = list(sim.members)
        for _ in range(120):
            action = rng.random()
            if action < 0.3:
                rng.shuffle(uids)
                cut = rng.randrange(1, len(uids))
                sim.partition(uids[:cut], uids[cut:])
            elif action < 0.5:
                sim.heal()
            elif action < 0.7 and sim.nodes:
                victim = rng.choice(list(sim.nodes))
                sim.kill(victim)
            else:
                for uid in uids:
                    if uid not in sim.nodes:
                        sim.start(uid)
            await trio.sleep(rng.uniform(0.1, 5))
        for uid in uids:
            if uid not in sim.nodes:
                sim.start(uid)
        sim.heal()
        sim.drop_rate = 0.0
        master = await sim.wait_single_master(timeout=30)
        await trio.sleep(3)
        assert master.term == max(node.term for node in sim.nodes.values())
    run_sim(body, 5, seed)


def test_a_master_no_majority_acknowledges_steps_down_within_a_window():
    async def body(sim):
        sim.drop_kinds = {"heartbeat_ack"}
        longest = 0.0
        since: dict[int, float] = {}
        for _ in range(400):
            await trio.sleep(0.05)
            now = trio.current_time()
            for uid, node in sim.nodes.items():
                assert not node.is_master()
                if node.role == MASTER:
                    since.setdefault((uid, node.term), now)
                    longest = max(longest, now - since[(uid, node.term)])
        assert since, "somebody won an election"
        assert longest <= sim.timings.leader_window + 0.1
    run_sim(body, 3)


def test_the_checker_finds_two_masters_in_one_term_and_overlapping_leases():
    same_term = [
        {"time": 1.0, "node": 1, "term": 3, "role": MASTER, "lease_until": 1.5},
        {"time": 2.0, "node": 1, "term": 3, "role": "replica", "lease_until": None},
        {"time": 3.0, "node": 2, "term": 3, "role": MASTER, "lease_until": 3.5},
    ]
    assert any("term 3" in v for v in history.violations(same_term))
    overlapping = [
        {"time": 1.0, "node": 1, "term": 3, "role": MASTER, "lease_until": 2.0},
        # node 1 killed: nothing more recorded; its lease runs to 2.0
        {"time": 1.8, "node": 2, "term": 4, "role": MASTER, "lease_until": 2.6},
    ]
    assert any("overlap" in v for v in history.violations(overlapping))
    handover = [
        {"time": 1.0, "node": 1, "term": 3, "role": MASTER, "lease_until": 2.0},
        {"time": 2.1, "node": 2, "term": 4, "role": MASTER, "lease_until": 2.6},
    ]
    assert history.violations(handover) == []


# ---- the vote's freshness rule: CCS positions (term, index) ------------------------------------

def test_up_to_date_orders_positions_by_term_first_then_index():
    own = (3, 40)
    assert up_to_date([3, 40], own)            # as far: a tie is granted
    assert up_to_date([3, 41], own)
    assert up_to_date([4, 0], own)             # a later term wins over any index of an earlier one
    assert not up_to_date([3, 39], own)
    assert not up_to_date([2, 10_000], own)    # a copy of an older term, however many writes
    assert up_to_date([0, 0], (0, 0))          # a new cluster: every copy empty


def test_up_to_date_refuses_when_a_position_is_unknown_or_malformed():
    assert not up_to_date([5, 5], None)        # the voter cannot read its own copy
    for candidate in (None, 7, [1], [1, 2, 3], ["1", "2"], [1.0, 2], [True, 2], {"term": 1}):
        assert not up_to_date(candidate, (0, 0)), candidate


def _voter(position):
    """Node 1 of three, alone under a MockClock, past its leader window (so it may vote); the
    replies it sends, and a way to hand it a vote request."""
    replies = []
    node = Election(1, {1: {}, 2: {}, 3: {}}, lambda to, m: replies.append((to, m)),
                    MemoryVoteStore(term=4), ccs_position=lambda: position[0])

    def ask(candidate_position, *, term=5, prevote=False, sender=2):
        replies.clear()
        node.receive({"type": "vote_request", "term": term, "prevote": prevote,
                      "from": sender, "ccs_position": candidate_position})
        (to, reply), = replies
        assert to == sender and reply["type"] == "vote_reply"
        return reply["granted"]
    return node, ask


def test_a_voter_grants_only_a_candidate_at_least_as_far_in_ccs():
    async def main():
        position = [(4, 120)]
        node, ask = _voter(position)
        await trio.sleep(node.timings.leader_window + 0.1)
        # the copy that was down: standalone since its restart, an older term's many writes
        assert not ask([3, 900], prevote=True)
        assert not ask([4, 119], prevote=True)
        assert ask([4, 120], prevote=True)
        assert not ask([3, 900])
        assert node.voted_for is None           # a refused vote is no vote
        assert ask([5, 1])
        assert node.voted_for == 2 and node.store.load() == (5, 2)
        # one vote per term, however fresh the next candidate
        assert not ask([9, 9], sender=3)
        # a voter whose copy cannot be read does not vote at all
        position[0] = None
        assert not ask([9, 9], term=6, prevote=True, sender=3)
        assert not ask([9, 9], term=6, sender=3)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("seed", range(5))
def test_after_the_master_dies_the_survivor_with_the_newest_ccs_is_elected(seed):
    """The chaos run's case: the master dies while a restarted node's copy is still the one it
    had at its kill (standalone: it never re-attached) -- an older term's position with a higher
    index than the survivor that saw the later writes. The survivor must win, every time."""
    async def body(sim):
        old = await sim.wait_single_master()
        stale, fresh = [u for u in sim.members if u != old.uid]
        sim.positions.update({old.uid: (old.term, 70), fresh: (old.term, 70),
                              stale: (old.term - 1, 500)})
        await trio.sleep(1)
        sim.kill(old.uid)
        new = await sim.wait_single_master()
        assert new.uid == fresh
        await trio.sleep(5)
        assert [m.uid for m in sim.masters()] == [fresh]
    run_sim(body, 3, seed)


def test_a_node_that_cannot_read_its_ccs_copy_neither_campaigns_nor_votes():
    async def body(sim):
        old = await sim.wait_single_master()
        blind, other = [u for u in sim.members if u != old.uid]
        sim.positions[blind] = None
        sim.kill(old.uid)
        # `other` needs blind's vote, blind may not campaign: no master
        await trio.sleep(10)
        assert sim.masters() == []
        assert sim.nodes[blind].role != MASTER
        sim.positions[blind] = (0, 0)
        assert (await sim.wait_single_master()).uid in (blind, other)
    run_sim(body, 3)
