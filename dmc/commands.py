"""Compiles the shards' own `COMMAND` reply into the proxy's command table.

Key positions come from Redis's key specs, and routing comes from Redis's command tips
(`request_policy:*`, `response_policy:*`), the hints Redis publishes for cluster proxies and
clients. Only what no tip can say is decided here: which commands the proxy answers itself
(connection state, transactions, CLIENT), which need a connection of the client's own (blocking,
pub/sub), which it computes across shards (set algebra, PFCOUNT) and which it refuses.

This module runs once at start-up (and when shards are upgraded); it never sees user traffic.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import hiredis

from dmc import _fastpath
from dmc.resp import encode_commands

# Answered by the proxy itself: they are about the connection, not the data.
LOCAL_COMMANDS = {"ping", "echo", "quit", "select", "hello", "multi", "exec", "discard", "watch",
                  "unwatch", "auth", "reset", "monitor"}

# Pub/Sub lives on one shard of the map (its first), so that every PUBLISH reaches every
# subscriber: sharded channels (SPUBLISH/SSUBSCRIBE) included.
# Scripts whose declared keys CLIENT TRACKING remembers (as Redis, when the script reads).
TRACKED_SCRIPTS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
SUBSCRIBE_COMMANDS = {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
                      "sunsubscribe"}
PUBLISH_COMMANDS = {"publish", "spublish", "pubsub"}

SET_ALGEBRA = {"sunion", "sinter", "sdiff", "sintercard", "zunion", "zinter", "zdiff", "zintercard",
               "pfcount"}

# Fan-out commands whose response policy Redis calls `special`, merged by the proxy.
SPECIAL_MERGES = {"randomkey": "random", "info": "info"}

# Not (yet) served through the proxy, with the reason given to the client.
# Replication and server life-cycle belong to the cluster manager, not to a database's clients:
# through the proxy they would act on one shard behind the database's back.
_MANAGED = "ERR '{name}' is not allowed through the database endpoint: the cluster manages its shards"
REFUSED_COMMANDS = {
    "readonly": _MANAGED, "readwrite": _MANAGED, "sync": _MANAGED, "psync": _MANAGED,
    "replconf": _MANAGED, "failover": _MANAGED, "replicaof": _MANAGED, "slaveof": _MANAGED,
    "shutdown": _MANAGED, "config|rewrite": _MANAGED,
}

# What Redis serves while a script runs (flag `allow_busy`) and the proxy does not answer itself:
# SCRIPT KILL, FUNCTION KILL, FUNCTION STATS. Sent to every shard on its control connection, past
# the script that holds the shared one; merged by their response policy, FUNCTION STATS (policy
# `special`) as named here.
BUSY_MERGES = {"function|stats": "function_stats"}

# Sent to every shard though Redis gives them no request policy; replies merged as named.
FAN_OUT_COMMANDS = {"config|resetstat": "all_succeeded"}

# CONFIG SET through the database endpoint, as a managed Redis (Redis Enterprise, Redis Cloud)
# allows it: only the parameters that shape the database's own behaviour (eviction, encodings,
# keyspace events, slow log, script time limit), applied to every shard. The others belong to
# the cluster: where a shard listens and keeps its files, persistence, replication, memory
# limits, security, TLS, cluster mode, and its clients' connections (the proxy's clients are
# closed by dmcproxy's own `--timeout`, and a shard's `timeout` would cut the proxy's
# connections). Aliases count as their parameter. A name Redis does not know is left to the
# shards, so the error is Redis's own.
CONFIG_SET_ALLOWED = frozenset({
    "maxmemory-policy", "maxmemory-samples", "maxmemory-eviction-tenacity",
    "lfu-log-factor", "lfu-decay-time",
    "notify-keyspace-events",
    "slowlog-log-slower-than", "slowlog-max-len",
    "busy-reply-threshold", "lua-time-limit",
    # Writes refused while a shard has fewer replicas in sync (each shard counts its own).
    "min-replicas-to-write", "min-replicas-max-lag", "min-slaves-to-write", "min-slaves-max-lag",
    "latency-tracking", "latency-tracking-info-percentiles",
    "activerehashing", "hll-sparse-max-bytes",
    "lazyfree-lazy-user-del", "lazyfree-lazy-user-flush",
    "hash-max-listpack-entries", "hash-max-listpack-value",
    "hash-max-ziplist-entries", "hash-max-ziplist-value",
    "list-max-listpack-size", "list-max-ziplist-size", "list-compress-depth",
    "set-max-intset-entries", "set-max-listpack-entries", "set-max-listpack-value",
    "zset-max-listpack-entries", "zset-max-listpack-value",
    "zset-max-ziplist-entries", "zset-max-ziplist-value",
    "stream-node-max-bytes", "stream-node-max-entries",
})
CONFIG_SET_REFUSAL = "ERR CONFIG SET parameter '{param}' is managed by the cluster"

# A managed parameter set to the value the shards already apply (as their CONFIG GET shows it:
# `save ""`, `appendonly no`, `maxmemory 0` ...) is a no-op: the proxy answers +OK and sends
# nothing (a client that turns persistence off for a cache, the Redis suite's set-up). Other
# values are refused. These are refused whatever the value: each shard's own identity (where it
# listens and keeps its files: equal to one shard's is not the database's), secrets (an
# answer would tell whether a guess is right), and what Redis itself never sets at run time
# (immutable: one Redis refuses them too).
CONFIG_SET_NEVER = frozenset({
    "port", "bind", "bind-source-addr", "unixsocket", "unixsocketperm", "dir", "dbfilename",
    "appendfilename", "appenddirname", "logfile", "pidfile", "syslog-ident",
    "cluster-config-file", "requirepass", "masterauth", "masteruser", "replicaof", "slaveof",
    "daemonize", "supervised", "databases", "cluster-enabled", "io-threads", "io-threads-do-reads",
    "syslog-enabled", "syslog-facility", "always-show-logo", "set-proc-title", "disable-thp",
    "aclfile", "enable-protected-configs", "enable-debug-command", "enable-module-command",
})
CONFIG_SET_NEVER_PREFIXES = ("tls-", "cluster-announce-")
# The database's size, set through the endpoint as on one Redis: each shard gets its share
# (rounded up), up to the database's limit (the shards' own limit times the shards); 0 gives the
# shards their own limit back (fastpath/route.pxi::param_split).
CONFIG_SPLIT_PARAMS = frozenset({"maxmemory"})
# Compared as sizes (`1gb` is 1073741824); every other value as words (case and blanks aside).
CONFIG_MEMORY_PARAMS = frozenset({
    "maxmemory", "maxmemory-clients", "repl-backlog-size", "proto-max-bulk-len",
    "client-query-buffer-limit", "auto-aof-rewrite-min-size", "active-defrag-ignore-bytes",
})


@dataclass
class CommandEntry:
    """One row of the proxy's command table, in the terms of dmc._fastpath."""
    name: bytes
    arity: int
    route: str = "keyed"
    merge: str = "none"
    local: str | None = None
    has_subcommands: bool = False
    specs: list = field(default_factory=list)
    refusal: str | None = None
    writes: bool = False
    unmonitored: bool = False
    no_multi: bool = False          # COMMAND's `no_multi`: refused inside MULTI
    tracks_reads: bool = False      # a tracking client's read: its keys are remembered (CLIENT TRACKING)
    caches_script: bool = False     # EVAL, EVAL_RO: its body cached on every shard (fastpath/scripts.pxi)
    params: tuple | None = None     # (first, step, strict, refusal, {name: allowed}): see CommandTable.add
    cls: str = "other"              # counted as: "read", "write" or "other" (command_class)


def _pairs(flat):
    return {flat[i].decode() if isinstance(flat[i], bytes) else flat[i]: flat[i + 1]
            for i in range(0, len(flat) - 1, 2)}


def _key_spec(raw) -> tuple | None:
    """A key spec as (begin type, index or startfrom, keyword, find type, a, b, c), or None
    when Redis itself marks it unknown."""
    spec = _pairs(raw)
    bs = _pairs(spec["begin_search"])
    fk = _pairs(spec["find_keys"])
    bs_type = bs["type"].decode()
    fk_type = fk["type"].decode()
    if bs_type not in _fastpath.KEYSPEC_BEGIN or fk_type not in _fastpath.KEYSPEC_FIND:
        return None
    bspec, fspec = _pairs(bs["spec"]), _pairs(fk["spec"])
    if bs_type == "index":
        begin = (_fastpath.KEYSPEC_BEGIN["index"], int(bspec["index"]), b"")
    else:
        begin = (_fastpath.KEYSPEC_BEGIN["keyword"], int(bspec["startfrom"]), bspec["keyword"])
    if fk_type == "range":
        find = (_fastpath.KEYSPEC_FIND["range"], int(fspec["lastkey"]), int(fspec["keystep"]),
                int(fspec["limit"]))
    else:
        find = (_fastpath.KEYSPEC_FIND["keynum"], int(fspec["keynumidx"]), int(fspec["firstkey"]),
                int(fspec["keystep"]))
    return begin + find


def _legacy_spec(first: int, last: int, step: int) -> tuple | None:
    """Key spec from the (first, last, step) triple of servers older than Redis 7."""
    if first <= 0:
        return None
    lastkey = last - first if last >= 0 else last
    return (_fastpath.KEYSPEC_BEGIN["index"], first, b"", _fastpath.KEYSPEC_FIND["range"],
            lastkey, step, 0)


def applied_value(name: str, value: str) -> tuple | bool:
    """How CONFIG SET of a managed parameter is checked: (kind, the shards' value normalised as
    fastpath/commands.pxi::param_normalise normalises a client's), that and "split" for the
    database's size (CONFIG_SPLIT_PARAMS), or False: always refused."""
    if name in CONFIG_SET_NEVER or name.startswith(CONFIG_SET_NEVER_PREFIXES):
        return False
    if name in CONFIG_SPLIT_PARAMS:
        return ((_fastpath.PARAM_KINDS["memory"], value.strip(), "split") if value.strip().isdigit()
                else False)
    if name in CONFIG_MEMORY_PARAMS:
        return (_fastpath.PARAM_KINDS["memory"], value.strip()) if value.strip().isdigit() else False
    return (_fastpath.PARAM_KINDS["words"], " ".join(value.lower().split()))


def config_set_policy(known: list[str] | dict[str, str] | None) -> tuple:
    """The parameter policy of CONFIG SET: the allowed names pass, the other names the shards
    know are refused, but for a no-op when `known` gives their values (CONFIG GET * of a shard:
    {name: value}). Without the shards' names (`known` None), every other name is refused."""
    values = known if isinstance(known, dict) else {}
    names = {name.lower(): applied_value(name.lower(), values[name]) if name in values else False
             for name in known or ()}
    names.update((name, True) for name in CONFIG_SET_ALLOWED)
    return (2, 2, not known, CONFIG_SET_REFUSAL, names)


def command_class(flags: set[str]) -> str:
    """The class the endpoint's counters count a command in, from its COMMAND flags: `write`
    (SET, DEL, EVAL ...) before `readonly` (GET, EVAL_RO ...), everything else `other`
    (PING, INFO, SUBSCRIBE ...), as Redis Enterprise's read/write/other requests."""
    if "write" in flags:
        return "write"
    if "readonly" in flags:
        return "read"
    return "other"


def _entry(row, container: str | None = None,
           config_params: list[str] | dict[str, str] | None = None) -> CommandEntry:
    name = row[0].decode().lower()
    arity = int(row[1])
    flags = {f.decode() for f in row[2]}
    tips = [t.decode() for t in row[7]] if len(row) > 7 else []
    entry = CommandEntry(name=name.encode(), arity=arity)
    # What WAIT waits for and a fenced proxy refuses: commands that change data or replicate
    # (PUBLISH...), EXEC, whose queued commands do, and the scripts that may write (Redis 7.0
    # flags EVAL, EVALSHA and FCALL neither write nor may_replicate; their _ro forms are
    # read-only).
    entry.writes = bool(flags & {"write", "may_replicate"}) or \
        (container is None and name in ("exec", "eval", "evalsha", "fcall"))
    entry.cls = command_class(flags)
    # Redis shows MONITOR every command but the administrative ones.
    entry.unmonitored = bool(flags & {"admin", "skip_monitor"})
    entry.no_multi = "no_multi" in flags
    # What CLIENT TRACKING remembers for a client: read-only commands' keys, and scripts' (the
    # shard tracks a script's keys only when it reads; the proxy's table follows the shard).
    entry.tracks_reads = "readonly" in flags or name in TRACKED_SCRIPTS
    # One Redis caches every body EVAL runs: EVALSHA finds it whatever its keys.
    entry.caches_script = container is None and name in ("eval", "eval_ro")
    incomplete = False
    if len(row) > 8:
        entry.specs = [s for s in (_key_spec(raw) for raw in row[8]) if s is not None]
        incomplete = len(entry.specs) < len(row[8]) or any(
            b"incomplete" in _pairs(raw).get("flags", []) for raw in row[8])
    else:
        spec = _legacy_spec(int(row[3]), int(row[4]), int(row[5]))
        entry.specs = [spec] if spec else []
    entry.has_subcommands = len(row) > 9 and bool(row[9])
    top = container or name
    request = next((t.split(":", 1)[1] for t in tips if t.startswith("request_policy:")), None)
    response = next((t.split(":", 1)[1] for t in tips if t.startswith("response_policy:")), None)
    if name in LOCAL_COMMANDS:
        entry.route, entry.local = "local", name
    elif top == "client":
        # About the proxy's own client connections, not the shards' (which are the proxy).
        entry.route, entry.local = "local", "client"
    elif top == "cluster":
        # The OSS Cluster API, when the database has it (cluster_api.pxi); else to a shard.
        entry.route, entry.local = "local", "cluster"
    elif top == "acl":
        # The shards hold the ACL: changes go to every shard, the rest is answered by one, on
        # the connections of the client's own user (acl.pxi); DELUSER closes the proxy's
        # clients of the deleted users.
        entry.route, entry.local = "local", "acl"
    elif name == "scan":
        entry.route = "scan"
    elif name == "wait":
        entry.route = "wait"
    elif name in SUBSCRIBE_COMMANDS:
        entry.route = "subscribe"
    elif top in PUBLISH_COMMANDS:
        entry.route = "pubsub"
    elif top in REFUSED_COMMANDS or name in REFUSED_COMMANDS:
        refusal = REFUSED_COMMANDS.get(top) or REFUSED_COMMANDS[name]
        entry.route, entry.refusal = "refused", refusal.format(name=name)
    elif "allow_busy" in flags:
        entry.route = "control"
        entry.merge = BUSY_MERGES.get(name) or response or "all_succeeded"
    elif name in FAN_OUT_COMMANDS:
        entry.route, entry.merge = "all_shards", FAN_OUT_COMMANDS[name]
    elif "blocking" in flags:
        entry.route = "blocking"
    elif request == "multi_shard":
        if response == "agg_min":
            # MSETNX: all or nothing cannot be promised across shards; one shard or CROSSSLOT.
            entry.route = "keyed"
        else:
            entry.route = "split"
            entry.merge = response or "keyed_array"
    elif name in SET_ALGEBRA:
        # Keys on one shard: sent whole. Across shards: the proxy computes it (read-only only;
        # the *STORE forms stay single-shard, CROSSSLOT otherwise).
        entry.merge = name
    elif name in SPECIAL_MERGES:
        entry.route, entry.merge = "all_shards", SPECIAL_MERGES[name]
    elif top == "latency" and response == "special":
        # One shard's latency report would read as the database's: refused until merged.
        entry.route = "refused"
        entry.refusal = f"ERR '{name}' is not supported by this proxy yet: it reports one shard only"
    elif request in ("all_shards", "all_nodes") and response != "special":
        entry.route = "all_shards"
        entry.merge = response or "concat"
    elif name in ("sort", "sort_ro"):
        # Where its keys are (STORE's too) is asked of a shard; BY / GET patterns are checked
        # by the proxy first: only within the sorted key's slot (fastpath/sort.pxi).
        entry.route = "sort"
    elif incomplete:
        # MIGRATE ... KEYS: Redis cannot say from the spec where all keys are.
        entry.route = "getkeys"
    # request_policy:special and response_policy:special (INFO, RANDOMKEY, SCRIPT KILL ...) go
    # to the default shard until the proxy merges them.
    if name == "config|set":
        entry.params = config_set_policy(config_params)
    return entry


def compile_command_reply(reply, config_params: list[str] | dict[str, str] | None = None
                          ) -> list[CommandEntry]:
    """The table entries for a decoded `COMMAND` reply (RESP2, as hiredis returns it).
    config_params: `CONFIG GET *` of the shards, its names (or {name: value}, which makes a
    CONFIG SET of the applied value a no-op), to tell the parameters CONFIG SET refuses from
    names Redis does not know (None: every parameter not allowed is refused)."""
    entries = []
    for row in reply:
        entries.append(_entry(row, config_params=config_params))
        if len(row) > 9:
            for sub in row[9]:
                entries.append(_entry(sub, container=row[0].decode().lower(),
                                      config_params=config_params))
    return entries


def build_table(entries: list[CommandEntry]) -> _fastpath.CommandTable:
    table = _fastpath.CommandTable()
    for e in entries:
        table.add(e.name, e.arity, _fastpath.ROUTES[e.route], _fastpath.MERGES[e.merge],
                  _fastpath.LOCALS.get(e.local, 0), e.has_subcommands, e.specs, e.refusal,
                  e.params, e.writes, e.unmonitored, e.tracks_reads,
                  _fastpath.COMMAND_CLASSES[e.cls], e.no_multi, e.caches_script)
    return table


def ask_shard(host: str, port: int, *commands: list[bytes], timeout: float = 2.0,
              ssl_context=None) -> list:
    """Send commands to one shard over a blocking socket (TLS with ssl_context, an
    ssl.SSLContext); their replies, decoded."""
    reader = hiredis.Reader()
    replies = []
    with socket.create_connection((host, port), timeout=timeout) as plain, \
            (ssl_context.wrap_socket(plain) if ssl_context else plain) as sock:
        sock.sendall(encode_commands(commands))
        while len(replies) < len(commands):
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
    for cmd, reply in zip(commands, replies):
        if isinstance(reply, hiredis.ReplyError):
            raise ConnectionError(f"{host}:{port} refused {cmd[0].decode()}: {reply}")
    return replies


def _redis_version(info: bytes) -> str:
    for line in info.decode().splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _config_params(host: str, port: int, timeout: float, ssl_context=None) -> dict[str, str] | None:
    """The configuration a shard applies, {name: value} (aliases included), or None if it does
    not tell (CONFIG renamed, say): CONFIG SET then refuses every name it does not allow. Read
    when the proxy starts: the values CONFIG SET answers as no-ops."""
    try:
        flat = ask_shard(host, port, [b"CONFIG", b"GET", b"*"], timeout=timeout,
                         ssl_context=ssl_context)[0]
    except ConnectionError:
        return None
    return {flat[i].decode(): flat[i + 1].decode(errors="replace") for i in range(0, len(flat), 2)}


def table_from_shards(shards: list[tuple[str, int]], timeout: float = 2.0, ssl_context=None):
    """(command table, redis_version) from the first shard that answers (over TLS with
    ssl_context); ConnectionError if none does."""
    errors = []
    for host, port in shards:
        try:
            commands, info = ask_shard(host, port, [b"COMMAND"], [b"INFO", b"server"],
                                       timeout=timeout, ssl_context=ssl_context)
            params = _config_params(host, port, timeout, ssl_context)
            return build_table(compile_command_reply(commands, params)), _redis_version(info)
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc}")
    raise ConnectionError("no shard answered COMMAND: " + "; ".join(errors))
