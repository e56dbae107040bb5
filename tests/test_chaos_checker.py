"""The chaos history checker can fail: histories with a lost write, a stale read, a
non-linearizable pair, two masters and a duplicated list element are each reported, and valid
histories (overlapping operations, unknown outcomes) pass."""

from __future__ import annotations

import json
import math

from chaos import checker
from chaos.linearizable import Operation, check_register


def op(op, key, invoke, complete, outcome="ok", value=None, result=None, process=1,
       db="durable", durable=True, node=1):
    return {"type": "op", "process": process, "db": db, "durable": durable, "node": node,
            "op": op,
            "key": key, "value": value, "result": result, "invoke": invoke,
            "complete": complete if outcome != "unknown" else None, "outcome": outcome}


def final(op_name, key, result, db="durable", durable=True, at=100.0):
    return op(op_name, key, at, at + 0.01, result=result, process="final", db=db,
              durable=durable)


def w(v, a, b):
    return Operation("write", v, a, b)


def r(v, a, b):
    return Operation("read", v, a, b)


# ---- the register search ----------------------------------------------------------------------

def test_sequential_register_history_is_linearizable():
    assert check_register([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)]).ok


def test_stale_read_is_not_linearizable():
    result = check_register([w(1, 0, 1), w(2, 2, 3), r(1, 4, 5)])
    assert result.ok is False
    assert result.stuck_at.kind == "read" and result.stuck_at.value == 1


def test_read_of_a_value_not_yet_written_is_not_linearizable():
    # the pair: a read that completed before the write of its value was even invoked
    assert check_register([r(7, 0, 1), w(7, 2, 3)]).ok is False


def test_read_of_initial_value_after_a_completed_write_is_not_linearizable():
    assert check_register([w(1, 0, 1), r(None, 2, 3)]).ok is False


def test_concurrent_overlapping_operations_may_take_effect_in_either_order():
    # w1 and w2 overlap; reads see 2 then 1, which needs w2 before w1 -- allowed only because the
    # first read overlaps w1 too.
    ops = [w(1, 0, 10), w(2, 1, 3), r(2, 4, 5), r(1, 11, 12)]
    assert check_register(ops).ok
    # but once both writes completed, reading 2 then 1 is not possible
    assert check_register([w(1, 0, 2), w(2, 1, 3), r(2, 4, 5), r(1, 6, 7)]).ok is False


def test_unknown_write_may_have_happened_or_not():
    maybe = Operation("write", 5, 2)          # outcome unknown: complete = inf
    assert check_register([w(1, 0, 1), maybe, r(5, 10, 11)]).ok
    assert check_register([w(1, 0, 1), maybe, r(1, 10, 11)]).ok
    # ...but not both: once it is seen it cannot be unseen
    assert check_register([w(1, 0, 1), maybe, r(5, 10, 11), r(1, 12, 13)]).ok is False


def test_many_concurrent_processes_are_checked_quickly():
    ops = []
    for i in range(400):        # 4 processes, each write read back, all overlapping in pairs
        t = i * 1.0
        ops += [w(i, t, t + 1.5), r(i, t + 1.6, t + 1.7)]
    assert check_register(ops).ok


def test_budget_exhausted_is_undecided_not_a_verdict():
    ops = [Operation("write", i, 0) for i in range(30)] + [r(-1, 1, 2)]
    assert check_register(ops, budget=1000).ok is None


# ---- whole histories ---------------------------------------------------------------------------

def test_valid_history_passes_every_check():
    records = [
        op("set", "r", 0, 1, value="a"),
        op("get", "r", 0.5, 1.5, result="a", process=2),        # overlaps the write
        op("set", "r", 2, None, outcome="unknown", value="b", process=3),
        op("get", "r", 3, 4, result="b", process=2),
        op("txn_set", "t", 0, 1, value="x"),
        op("txn_get", "t", 2, 3, result=["x", "x"], process=2),
        op("write", "w:1", 0, 1, value="1"),
        op("write", "w:2", 1, None, outcome="unknown", value="2"),
        op("write", "w:3", 1, 2, outcome="fail", value="3"),
        op("incr", "c", 0, 1, result=1),
        op("incr", "c", 0.5, None, outcome="unknown", process=2),
        op("incr", "c", 2, 3, result=3),
        op("rpush", "l", 0, 1, value="e1"),
        op("rpush", "l", 1, None, outcome="unknown", value="e2"),
        final("get", "w:1", "1"), final("get", "w:2", None), final("get", "w:3", None),
        final("get", "c", "3"), final("lrange", "l", ["e1", "e2"]),
        final("get", "r", "b"),
        {"type": "fault", "kind": "kill_shard", "target": "shard 1", "start": 1.0, "end": 1.0},
        {"type": "shard_map", "time": 1, "bdb": 1, "version": 3,
         "masters": [{"uid": 1, "slots": [[0, 8191]]}, {"uid": 2, "slots": [[8192, 16383]]}],
         "shard_roles": [{"uid": 1, "slots": [[0, 8191]]}]},
    ]
    report = checker.check(records)
    assert report["acknowledged_lost"] == 0
    assert report["plain_lost"] == 0
    assert report["linearizability_violations"] == 0
    assert report["registers_checked"] == 2
    assert report["counter_violations"] == 0
    assert report["list_violations"] == 0
    assert report["two_masters"] == 0
    assert report["operations"]["total"] == 14
    assert [f["kind"] for f in report["faults"]] == ["kill_shard"]
    json.dumps(report)          # the --json report is plain JSON


def test_lost_wait_acknowledged_write_is_reported():
    records = [op("write", "w:1", 0, 1, value="1"), op("write", "w:2", 0, 1, value="2"),
               final("get", "w:1", "1"), final("get", "w:2", None)]
    report = checker.check(records)
    assert report["acknowledged_lost"] == 1
    assert report["details"]["lost_writes"]["durable"][0]["key"] == "w:2"


def test_lost_plain_write_is_counted_and_judged_against_the_async_window():
    plain = {"db": "replicated", "durable": False}
    records = [op("write", "p:1", 0, 10.0, value="1", **plain),     # 0.5 s before the fault
               op("write", "p:2", 0, 2.0, value="2", **plain),      # 8.5 s before it
               final("get", "p:1", None, **plain), final("get", "p:2", None, **plain),
               {"type": "fault", "kind": "kill_shard", "target": "s", "start": 10.5,
                "end": 10.5}]
    report = checker.check(records)
    assert report["acknowledged_lost"] == 0
    assert report["plain_lost"] == 2
    assert report["plain_lost_outside_window"] == 1


def test_stale_read_in_a_history_is_a_linearizability_violation():
    records = [op("set", "r", 0, 1, value="a"), op("set", "r", 2, 3, value="b"),
               op("get", "r", 4, 5, result="a", process=2)]
    report = checker.check(records)
    assert report["linearizability_violations"] == 1
    v = report["details"]["linearizability"]["violations"][0]
    assert v["key"] == "r" and v["stuck_at"]["result"] == "a"


def test_torn_transaction_read_is_a_linearizability_violation():
    records = [op("txn_set", "t", 0, 1, value="x"), op("txn_set", "t", 2, 3, value="y"),
               op("txn_get", "t", 4, 5, result=["y", "x"], process=2)]
    assert checker.check(records)["linearizability_violations"] == 1


def test_counter_below_acknowledged_increments_is_reported():
    records = [op("incr", "c", i, i + 0.5, result=i + 1) for i in range(3)]
    records.append(final("get", "c", "2"))
    report = checker.check(records)
    assert report["counter_violations"] == 1 and report["acknowledged_lost"] == 1


def test_counter_returning_one_value_twice_is_reported():
    records = [op("incr", "c", 0, 1, result=1), op("incr", "c", 2, 3, result=1),
               final("get", "c", "2")]
    assert checker.check(records)["counter_violations"] == 1


def test_duplicated_list_element_is_reported():
    records = [op("rpush", "l", 0, 1, value="e1"), op("rpush", "l", 2, 3, value="e2"),
               final("lrange", "l", ["e1", "e2", "e2"])]
    report = checker.check(records)
    assert report["list_violations"] == 1
    assert report["details"]["lists"][0]["duplicated"] == ["e2"]
    assert report["acknowledged_lost"] == 0


def test_lost_list_element_is_reported():
    records = [op("rpush", "l", 0, 1, value="e1"), op("rpush", "l", 2, 3, value="e2"),
               final("lrange", "l", ["e2"])]
    report = checker.check(records)
    assert report["details"]["lists"][0]["lost"] == ["e1"]
    assert report["acknowledged_lost"] == 1


def test_two_overlapping_cluster_masters_are_reported():
    election = [
        {"time": 0.0, "node": 1, "term": 1, "role": "master", "lease_until": 5.0},
        {"time": 2.0, "node": 2, "term": 2, "role": "master", "lease_until": 6.0},
        {"time": 7.0, "node": 1, "term": 2, "role": "follower"},
        {"time": 7.0, "node": 2, "term": 2, "role": "master", "lease_until": 8.0},
    ]
    report = checker.check([], election)
    assert report["two_masters"] >= 1
    assert any("overlap" in m for m in report["details"]["two_masters"])


def test_a_master_woken_from_sigstop_with_its_lease_long_past_is_not_two_masters():
    election = [
        {"time": 0.0, "node": 1, "term": 1, "role": "master", "lease_until": 0.5},
        {"time": 0.4, "node": 1, "term": 1, "role": "master", "lease_until": 0.9},
        # stopped from 0.5 to 10; node 2 elected at 3; node 1 wakes at 10 and records its
        # last (long expired) lease before it steps down
        {"time": 3.0, "node": 2, "term": 2, "role": "master", "lease_until": 3.5},
        {"time": 3.4, "node": 2, "term": 2, "role": "master", "lease_until": 12.0},
        {"time": 10.0, "node": 1, "term": 1, "role": "master", "lease_until": 0.9},
        {"time": 10.1, "node": 1, "term": 2, "role": "replica"},
    ]
    assert checker.check([], election)["two_masters"] == 0
    # ... but one that acts past its lease is caught
    election[4] = {"time": 10.0, "node": 1, "term": 1, "role": "master", "lease_until": 10.5}
    assert checker.check([], election)["two_masters"] >= 1


def test_a_write_acknowledged_by_a_minority_node_past_the_fence_is_reported():
    cut = {"type": "fault", "kind": "partition", "target": "nodes [3] | [1, 2]", "start": 10.0,
           "end": 20.0, "minority": [3]}
    before_the_fence = op("write", "w:1", 10.5, 10.6, value="1", node=3)
    past_the_fence = op("write", "w:2", 12.0, 12.1, value="2", node=3)
    refused = op("write", "w:3", 13.0, 13.1, value="3", node=3, outcome="fail")
    majority = op("write", "w:4", 14.0, 14.1, value="4", node=1)
    after_the_heal = op("write", "w:5", 21.0, 21.1, value="5", node=3)
    records = [cut, before_the_fence, past_the_fence, refused, majority, after_the_heal]
    report = checker.check(records)
    assert checker.FENCE_BOUND < 2.0
    assert report["minority_writes_acknowledged"] == 1
    found = report["details"]["minority_writes"][0]
    assert found["key"] == "w:2" and found["node"] == 3 and found["after_cut"] == 2.1


def test_slot_with_two_master_shards_is_reported():
    records = [{"type": "shard_map", "time": 1.0, "bdb": 1, "version": 4,
                "masters": [{"uid": 1, "slots": [[0, 9000]]},
                            {"uid": 3, "slots": [[8192, 16383]]}], "shard_roles": []}]
    assert checker.check(records)["two_masters"] == 1


def test_ccs_roles_promoting_the_new_master_of_a_paused_map_are_not_two_masters():
    def shard_map(paused):
        return {"type": "shard_map", "time": 1.0, "bdb": 1, "version": 4, "paused": paused,
                "masters": [{"uid": 1, "slots": [[0, 16383]]}],
                "shard_roles": [{"uid": 1, "slots": [[0, 16383]]},
                                {"uid": 2, "slots": [[0, 16383]]}]}
    assert checker.check([shard_map(paused=True)])["two_masters"] == 0
    assert checker.check([shard_map(paused=False)])["two_masters"] == 1


def test_one_map_version_with_two_contents_is_reported():
    def shard_map(uid):
        return {"type": "shard_map", "time": 1.0, "bdb": 1, "version": 4,
                "masters": [{"uid": uid, "slots": [[0, 16383]]}], "shard_roles": []}
    assert checker.check([shard_map(1), shard_map(1)])["two_masters"] == 0
    assert checker.check([shard_map(1), shard_map(2)])["two_masters"] == 1


def test_availability_counts_successes_and_the_longest_gap_per_fault():
    records = [op("get", "r", t, t + 0.1, result=None) for t in (0, 1, 2, 6, 7)]
    records += [op("get", "r", t, t + 0.1, outcome="fail") for t in (3, 4, 5)]
    records.append({"type": "fault", "kind": "pause_shard", "target": "s", "start": 2.5,
                    "end": 5.5})
    a = checker.check(records)["availability"]
    assert a["fraction_ok"] == 5 / 8
    assert math.isclose(a["longest_gap"], 4.0, abs_tol=1e-6)
    # the fault's time is [2.5, 5.5] and the AFTERMATH (3 s) after it
    assert checker.AFTERMATH == 3.0
    stop = a["by_fault"]["pause_shard"]
    assert stop["operations"] == 5 and stop["fraction_ok"] == 2 / 5
    assert math.isclose(stop["longest_gap"], 6.1 - 2.5, abs_tol=1e-6)
