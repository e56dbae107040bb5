"""One chaos client: a process that runs a seeded mix of operations against the databases'
endpoints until its deadline and appends every operation to a history file of its own (the
record format is chaos.checker's), one line at a time, so that what it did survives it.

Every write carries a value no other write has (`<process>-<n>`), so a read names the write it
saw. A client talks to one node's endpoint and moves to the next node's when a connection cannot
be made. Outcomes are classified conservatively -- anything that may have been applied is
`unknown`, never `fail`:

- a connection that could not be made, or a Redis error that means the command was refused
  before it ran (`REFUSED`), is `fail`;
- a timeout, a lost connection or any other error on a write is `unknown`;
- on a durable database a write is followed by `WAIT 1 1000`; fewer than one replica is
  `unknown` (applied on the master, perhaps not on disk anywhere).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import redis

# (Not TRYAGAIN: dmcproxy answers it for a command in flight to a shard that lost its slots,
# which may have been applied: dmc/fastpath/fence.pxi.)
REFUSED = {"READONLY", "EXECABORT", "CROSSSLOT", "WRONGTYPE", "LOADING",
           "MASTERDOWN", "NOAUTH", "OOM", "NOREPLICAS"}
TIMEOUT = 2.0           # s for one reply (a SIGSTOPped shard is `unknown` after that)
WAIT_MS = 1000
REGISTERS, COUNTERS, LISTS, PAIRS = 4, 2, 2, 2

# What each database's clients do, with weights. Registers and pairs are checked for
# linearizability on the durable database only (plain replication may lose what a reader saw).
MIX = {
    True: {"write": 3, "set": 3, "get": 4, "incr": 2, "rpush": 2, "txn_set": 1, "txn_get": 1},
    False: {"write": 4, "incr": 2, "rpush": 2},
}


@dataclass
class Database:
    name: str
    durable: bool
    endpoints: list[tuple[str, int]]      # the database's endpoint on every node
    nodes: list[int] = field(default_factory=list)   # the node uid of each endpoint


class Outcome(Exception):
    def __init__(self, outcome: str, error: str):
        super().__init__(error)
        self.outcome = outcome


class Client:
    """A connection to one of the database's endpoints, made again when it breaks."""

    def __init__(self, db: Database, first: int):
        self.db, self.at, self.conn = db, first % len(db.endpoints), None

    def _connect(self) -> redis.Connection:
        if self.conn is None:
            host, port = self.db.endpoints[self.at]
            conn = redis.Connection(host=host, port=port, socket_timeout=TIMEOUT,
                                    socket_connect_timeout=1.0, retry=None, protocol=2)
            try:
                conn.connect()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.at = (self.at + 1) % len(self.db.endpoints)
                raise Outcome("fail", f"connect: {exc}") from None
            self.conn = conn
        return self.conn

    @property
    def node(self) -> int:
        """The node uid of the endpoint the next command goes to."""
        return self.db.nodes[self.at] if self.db.nodes else self.at + 1

    def close(self) -> None:
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None

    def call(self, *commands: tuple) -> list:
        """Send the commands as one pipeline and read their replies; error replies come back
        as redis.ResponseError values (EXEC's nested ones too)."""
        conn = self._connect()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            return [_reply(conn) for _ in commands]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.close()
            raise Outcome("unknown", f"{type(exc).__name__}: {exc}") from None


def _reply(conn):
    try:
        return conn.read_response(disable_decoding=False)
    except redis.ResponseError as exc:
        return exc


# redis-py strips the error code from the message of the replies it has a class for
CODES = {redis.exceptions.ReadOnlyError: "READONLY", redis.exceptions.ExecAbortError: "EXECABORT",
         redis.exceptions.BusyLoadingError: "LOADING", redis.exceptions.OutOfMemoryError: "OOM",
         redis.exceptions.AuthenticationError: "NOAUTH",
         redis.exceptions.MasterDownError: "MASTERDOWN"}


def _check(reply, writes: bool):
    """Raise the outcome an error reply means."""
    if isinstance(reply, redis.ResponseError):
        kind = CODES.get(type(reply)) or str(reply).split(" ", 1)[0]
        raise Outcome("fail" if kind in REFUSED or not writes else "unknown", str(reply))
    if isinstance(reply, list):
        for r in reply:
            _check(r, writes)
    return reply


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def perform(client: Client, op: str, key: str, value: str | None):
    """Run one operation; return its result or raise Outcome."""
    durable = client.db.durable
    writes = op in ("write", "set", "incr", "rpush", "txn_set")
    if op in ("write", "set"):
        commands = [("SET", key, value)]
    elif op == "get":
        commands = [("GET", key)]
    elif op == "incr":
        commands = [("INCR", key)]
    elif op == "rpush":
        commands = [("RPUSH", key, value)]
    elif op == "lrange":
        commands = [("LRANGE", key, 0, -1)]
    elif op == "txn_set":
        commands = [("MULTI",), ("SET", key + ":a", value), ("SET", key + ":b", value), ("EXEC",)]
    elif op == "txn_get":
        commands = [("MULTI",), ("GET", key + ":a"), ("GET", key + ":b"), ("EXEC",)]
    else:
        raise ValueError(f"unknown operation {op}")
    if writes and durable:
        commands.append(("WAIT", 1, WAIT_MS))
    replies = [_check(r, writes) for r in client.call(*commands)]
    if writes and durable and replies[-1] < 1:
        raise Outcome("unknown", f"WAIT reached {replies[-1]} replicas")
    reply = replies[len(commands) - 2 if writes and durable else len(commands) - 1]
    if op.startswith("txn_"):
        if reply is None:
            raise Outcome("fail" if op == "txn_get" else "unknown", "EXEC aborted")
        return [_text(v) for v in reply] if op == "txn_get" else None
    if op == "lrange":
        return [_text(v) for v in reply]
    return _text(reply) if not isinstance(reply, int) else reply


def key_for(op: str, rng: random.Random, process: int, n: int) -> str:
    if op == "write":
        return f"w:{process}:{n}"
    if op in ("set", "get"):
        return f"r:{rng.randrange(REGISTERS)}"
    if op == "incr":
        return f"c:{rng.randrange(COUNTERS)}"
    if op == "rpush":
        return f"l:{rng.randrange(LISTS)}"
    return f"{{t:{rng.randrange(PAIRS)}}}"       # both keys of a pair in one slot


def record(out, process, db: Database, node, op, key, value, invoke, complete, outcome,
           result=None, error=None) -> None:
    out.write(json.dumps({"type": "op", "process": process, "db": db.name,
                          "durable": db.durable, "node": node, "op": op, "key": key,
                          "value": value,
                          "result": result, "invoke": invoke, "complete": complete,
                          "outcome": outcome, "error": error}) + "\n")
    out.flush()


def run_client(process: int, databases: list[Database], seed: int, deadline,
               history: str, counts=None, at: int = 0) -> None:
    """The body of a client process, until `deadline` (a time.monotonic(), or a shared value
    whose `.value` is one, 0 while not set yet). `counts[at:at + 3]` (a shared array: this
    client's ok, fail, unknown) feeds the runner's progress bar."""
    rng = random.Random(seed * 1000 + process)
    clients = [Client(db, process) for db in databases]
    n = 0

    def running() -> bool:
        until = getattr(deadline, "value", deadline)
        return not until or time.monotonic() < until
    with open(history, "a") as out:
        while running():
            client = rng.choice(clients)
            mix = MIX[client.db.durable]
            op = rng.choices(list(mix), weights=list(mix.values()))[0]
            key = key_for(op, rng, process, n)
            value = f"{process}-{n}" if op in ("write", "set", "rpush", "txn_set") else None
            n += 1
            node = client.node
            invoke = time.monotonic()
            try:
                result = perform(client, op, key, value)
            except Outcome as exc:
                complete = time.monotonic() if exc.outcome == "fail" else None
                record(out, process, client.db, node, op, key, value, invoke, complete,
                       exc.outcome, error=str(exc)[:200])
                if counts is not None:
                    counts[at + (1 if exc.outcome == "fail" else 2)] += 1
                time.sleep(0.05)        # a failing endpoint is not hammered
                continue
            record(out, process, client.db, node, op, key, value, invoke, time.monotonic(),
                   "ok", result)
            if counts is not None:
                counts[at] += 1
    for c in clients:
        c.close()


def read_final(db: Database, keys: list[tuple[str, str]], history: str,
               attempts_until: float) -> int:
    """The reads after the faults: every key written once, every counter, list, register and
    pair, retried until each answers or `attempts_until`. Returns the reads that never did."""
    client = Client(db, 0)
    missing = 0
    with open(history, "a") as out:
        for op, key in keys:
            while True:
                node = client.node
                invoke = time.monotonic()
                try:
                    result = perform(client, op, key, None)
                except Outcome:
                    if time.monotonic() > attempts_until:
                        missing += 1
                        break
                    time.sleep(0.2)
                    continue
                record(out, "final", db, node, op, key, None, invoke, time.monotonic(), "ok",
                       result)
                break
    client.close()
    return missing
