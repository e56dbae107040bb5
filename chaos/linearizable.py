"""Single-key linearizability of a register: the Wing & Gong search with Lowe's memoization, as
Porcupine does it (no maintained Python package does; Porcupine is Go, Knossos is Clojure).

A history is a list of `Operation`s on one key: a write of a value or a read that returned one,
each with the time it was invoked and the time it completed. An operation whose outcome is
unknown (the client timed out or lost its connection) has `complete = math.inf`: it may have
taken effect at any moment after its invocation, or never (for a register the two are the same:
taking effect after everything else is unobservable). Failed operations, and reads that did not
return, constrain nothing and are left out by the caller.

The search walks the invocations and completions in time order, linearizing a pending
operation whenever the register model allows it, and backtracks when it reaches the completion
of an operation it has not linearized. A cache of (linearized set, register state) pairs cuts
the branches already explored; a step budget bounds the search on a pathological history, whose
result is then `None` (undecided) rather than a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_BUDGET = 2_000_000      # search steps per key before giving up (undecided)


@dataclass(frozen=True)
class Operation:
    kind: str                   # "write" or "read"
    value: Any                  # written, or read (None: absent); hashable
    invoke: float
    complete: float = math.inf  # inf: the outcome is unknown
    ref: Any = None             # the caller's handle on the operation (shown in a report)


class _Entry:
    __slots__ = ("op", "index", "is_call", "time", "match", "prev", "next")

    def __init__(self, op, index, is_call, time):
        self.op, self.index, self.is_call, self.time = op, index, is_call, time
        self.match = self.prev = self.next = None


def _entries(ops: list[Operation]) -> _Entry:
    """A doubly linked list of calls and returns in time order, behind a sentinel head. At equal
    times calls go first: touching operations count as concurrent (the permissive reading, since
    the clients' clocks are one machine's monotonic clock read at slightly different moments)."""
    events = []
    for i, op in enumerate(ops):
        call, ret = _Entry(op, i, True, op.invoke), _Entry(op, i, False, op.complete)
        call.match = ret
        events += [call, ret]
    events.sort(key=lambda e: (e.time, not e.is_call))
    head = _Entry(None, -1, False, -math.inf)
    prev = head
    for e in events:
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(call: _Entry) -> None:
    """Take a linearized operation's call and return out of the list."""
    for e in (call, call.match):
        e.prev.next = e.next
        if e.next is not None:
            e.next.prev = e.prev


def _unlift(call: _Entry) -> None:
    for e in (call.match, call):
        e.prev.next = e
        if e.next is not None:
            e.next.prev = e


def _step(state, op: Operation) -> tuple[bool, Any]:
    if op.kind == "write":
        return True, op.value
    return op.value == state, state


@dataclass
class Result:
    ok: bool | None             # None: the budget ran out
    ops: int
    # On a violation: the operation whose completion no linearization could reach, and the
    # longest prefix of operations that could be linearized (in their linearized order).
    stuck_at: Operation | None = None
    longest_prefix: list[Operation] | None = None


def check_register(ops: list[Operation], initial=None,
                   budget: int = DEFAULT_BUDGET) -> Result:
    """Whether `ops` (all on one key, initially `initial`) are linearizable."""
    if not ops:
        return Result(True, 0)
    head = _entries(ops)
    state, linearized = initial, 0
    cache: set[tuple[int, Any]] = set()
    calls: list[tuple[_Entry, Any]] = []
    best: list[Operation] = []
    stuck = None
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps > budget:
            return Result(None, len(ops))
        if entry.is_call:
            allowed, after = _step(state, entry.op)
            if allowed:
                key = (linearized | (1 << entry.index), after)
                if key not in cache:
                    cache.add(key)
                    calls.append((entry, state))
                    state, linearized = after, key[0]
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        # The completion of an operation not linearized yet.
        if entry.time == math.inf:
            return Result(True, len(ops))       # all that is left never has to happen
        if len(calls) >= len(best):
            best, stuck = [c.op for c, _ in calls], entry.op
        if not calls:
            return Result(False, len(ops), stuck, best)
        entry, state = calls.pop()
        linearized &= ~(1 << entry.index)
        _unlift(entry)
        entry = entry.next
    return Result(True, len(ops))
