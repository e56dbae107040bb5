"""sentinel_service: Redis Enterprise's discovery service, the Redis Sentinel protocol on every
node (RE: port 8001; here the node's `sentinel_port`), so that unmodified Sentinel clients find a
database by its name and follow it when its endpoint moves.

Each database is a Sentinel *master* named after the database; its address is the database's
master endpoint (a node's dmcproxy, never a shard: see control/discovery.py for which node);
the other advertised endpoints are its *replicas* (every proxy serves the whole database); the
other nodes' sentinel services are its *sentinels*. Replies have the field names, order and
shapes of a real redis-sentinel (7.x), in RESP2 or, after `HELLO 3`, RESP3.

Commands: `SENTINEL get-master-addr-by-name|masters|master|replicas|slaves|sentinels|myid|
ckquorum`, `PING`, `ECHO`, `AUTH` (accepted with any credentials: the discovery service holds
no secret, each database asks for its own password), `HELLO`, `CLIENT SETNAME|GETNAME|SETINFO|
ID`, `ROLE`, `INFO`, `COMMAND` (empty), `QUIT`, `RESET`, and `SUBSCRIBE`/`PSUBSCRIBE` with their
unsubscribes: when a database's master endpoint changes, `+switch-master <name> <old ip> <old
port> <new ip> <new port>` is published, as a Sentinel does after a failover. Anything else gets
Sentinel's own errors.

The view comes from the node's own CCS copy (discovery.ViewFollower); answering never waits on
CCS: while it is away, the last view is served (after a restart, the one kept on disk).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from dataclasses import dataclass, field
from functools import partial

import hiredis
import trio

from control import ccs
from control.discovery import DbEndpoint, DiscoveryView, run_id
from control.discovery_follower import ViewFollower
from control.node import NodeConfig, service_command

log = logging.getLogger("sentinel_service")

REDIS_VERSION = "7.0.15"          # what HELLO and INFO report (the shards' redis-server)
MAX_PENDING = 1 << 20             # bytes of one unfinished command before the client is dropped
OUTBOX = 256                      # replies queued for a client before it is dropped as too slow
SWITCH_MASTER = "+switch-master"
DOWN_AFTER_MS = ccs.HEARTBEAT_TTL_MS   # a node is seen down once its heartbeat has expired


# ---- replies, in RESP2 or RESP3 -----------------------------------------------------------

class Simple(str):
    """A status reply (+OK)."""


class Error(str):
    """An error reply (-ERR ...)."""


class Push(list):
    """A pub/sub message: RESP3 push, RESP2 array."""


class NullArray:
    """The null array (RESP2 *-1, RESP3 _)."""


def encode(value, proto: int) -> bytes:
    """One reply. str/bytes are bulk strings, dict a map (RESP2: flat array), None null."""
    if isinstance(value, Simple):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, Error):
        return b"-%s\r\n" % value.encode()
    if isinstance(value, bool):
        raise TypeError("no booleans in Sentinel replies")
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if value is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    if value is NullArray:
        return b"_\r\n" if proto == 3 else b"*-1\r\n"
    if isinstance(value, dict):
        head = b"%%%d\r\n" % len(value) if proto == 3 else b"*%d\r\n" % (2 * len(value))
        return head + b"".join(encode(k, proto) + encode(v, proto) for k, v in value.items())
    if isinstance(value, Push):
        head = b">%d\r\n" if proto == 3 else b"*%d\r\n"
        return head % len(value) + b"".join(encode(v, proto) for v in value)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(encode(v, proto) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


# ---- what Sentinel says of a master, a replica, a sentinel (pure) ----------------------------

def _link_fields(age_ms: int) -> dict:
    return {"link-pending-commands": "0", "link-refcount": "1", "last-ping-sent": "0",
            "last-ok-ping-reply": str(age_ms), "last-ping-reply": str(age_ms),
            "down-after-milliseconds": str(DOWN_AFTER_MS)}


def master_state(db: DbEndpoint, view: DiscoveryView, me: int, age_ms: int,
                 epoch: int) -> dict:
    """SENTINEL MASTER <name>'s fields, in redis-sentinel's order."""
    flags = "master" if db.master else "master,s_down,o_down"
    others = [n for n in view.sentinels() if n.uid != me]
    return {"name": db.name, "ip": db.master or "", "port": str(db.port),
            "runid": run_id(view.fqdn, "bdb", db.uid, db.master), "flags": flags,
            **_link_fields(age_ms), "info-refresh": str(age_ms), "role-reported": "master",
            "role-reported-time": str(age_ms), "config-epoch": str(epoch),
            "num-slaves": str(len(db.addresses[1:])), "num-other-sentinels": str(len(others)),
            "quorum": str(len(view.sentinels()) // 2 + 1), "failover-timeout": "180000",
            "parallel-syncs": "1"}


def replica_states(db: DbEndpoint, view: DiscoveryView, age_ms: int) -> list[dict]:
    """SENTINEL REPLICAS <name>: the database's other advertised endpoints."""
    return [{"name": f"{address}:{db.port}", "ip": address, "port": str(db.port),
             "runid": run_id(view.fqdn, "bdb", db.uid, address), "flags": "slave",
             **_link_fields(age_ms), "info-refresh": str(age_ms), "role-reported": "slave",
             "role-reported-time": str(age_ms), "master-link-down-time": "0",
             "master-link-status": "ok", "master-host": db.master, "master-port": str(db.port),
             "slave-priority": "100", "slave-repl-offset": "0", "replica-announced": "1"}
            for address in db.addresses[1:]]


def sentinel_states(view: DiscoveryView, me: int, age_ms: int) -> list[dict]:
    """SENTINEL SENTINELS <name>: the other nodes' sentinel services that are up."""
    return [{"name": run_id(view.fqdn, "node", n.uid), "ip": n.address,
             "port": str(n.sentinel_port), "runid": run_id(view.fqdn, "node", n.uid),
             "flags": "sentinel", **_link_fields(age_ms),
             "last-hello-message": str(age_ms), "voted-leader": "?", "voted-leader-epoch": "0"}
            for n in view.sentinels() if n.uid != me]


# ---- one client ------------------------------------------------------------------------------

@dataclass(eq=False)
class Client:
    id: int
    stream: trio.SocketStream
    send: trio.MemorySendChannel
    proto: int = 2
    name: str | None = None
    channels: set[str] = field(default_factory=set)
    patterns: set[str] = field(default_factory=set)

    @property
    def subscribed(self) -> int:
        return len(self.channels) + len(self.patterns)

    def reply(self, value) -> bool:
        """Queue a reply; False if the client is too slow (its outbox is full) or gone."""
        try:
            self.send.send_nowait(encode(value, self.proto))
            return True
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False


class Quit(Exception):
    """Close the connection once what was queued is sent."""


def _wrong_args(command: str) -> Error:
    return Error(f"ERR wrong number of arguments for '{command}' command")


def _unknown_command(args: list[str]) -> Error:
    rest = " ".join(f"'{a}'" for a in args[1:21])
    return Error(f"ERR unknown command '{args[0]}', with args beginning with: {rest} ")


NO_SUCH_MASTER = Error("ERR No such master with that name")
SUBSCRIBED_ONLY = ("SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "PING", "QUIT",
                   "RESET")


class SentinelService:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.follower = ViewFollower(
            ccs.Session.of_node(config), config.cluster_fqdn, on_change=self._view_changed,
            cache=config.run_dir / "discovery_view.sentinel_service.json")
        self.clients: set[Client] = set()
        self.epochs: dict[int, int] = {}        # bdb uid -> master switches seen here
        self.started = time.time()
        self._next_id = 0

    @property
    def view(self) -> DiscoveryView:
        return self.follower.view

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.follower.run)
            await nursery.start(partial(trio.serve_tcp, self._serve, self.config.sentinel_port,
                                        host=self.config.address))
            log.info("node %d: sentinel_service on %s:%d", self.config.uid, self.config.address,
                     self.config.sentinel_port)
            task_status.started()

    # ---- +switch-master ----------------------------------------------------------------------

    def _view_changed(self, old: DiscoveryView, new: DiscoveryView) -> None:
        for uid, db in new.dbs.items():
            before = old.dbs.get(uid)
            if before is None or before.master is None or db.master is None \
                    or before.master == db.master:
                continue
            self.epochs[uid] = self.epochs.get(uid, 0) + 1
            message = f"{db.name} {before.master} {before.port} {db.master} {db.port}"
            log.info("%s %s", SWITCH_MASTER, message)
            self.publish(SWITCH_MASTER, message)

    def publish(self, channel: str, message: str) -> int:
        sent = 0
        for client in list(self.clients):
            if channel in client.channels:
                sent += client.reply(Push(["message", channel, message]))
            for pattern in client.patterns:
                if fnmatch.fnmatchcase(channel, pattern):
                    sent += client.reply(Push(["pmessage", pattern, channel, message]))
        return sent

    # ---- connections -----------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel(OUTBOX)
        self._next_id += 1
        client = Client(self._next_id, stream, send)
        self.clients.add(client)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, client, receive, nursery.cancel_scope)
                await self._read(client)
                send.close()            # the writer sends what is queued, then ends
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.clients.discard(client)
            await trio.aclose_forcefully(stream)

    async def _write(self, client: Client, receive: trio.MemoryReceiveChannel,
                     done: trio.CancelScope) -> None:
        try:
            async with receive:
                async for data in receive:
                    await client.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()

    async def _read(self, client: Client) -> None:
        reader = hiredis.Reader()
        inline = bytearray()
        while True:
            data = await client.stream.receive_some(65536)
            if not data:
                return
            try:
                for args in self._commands(reader, inline, data):
                    if not client.reply(self.execute(client, args)):
                        return
            except Quit:
                return
            except hiredis.ProtocolError as exc:
                client.reply(Error(f"ERR Protocol error: {exc}"))
                return
            if reader.len() + len(inline) > MAX_PENDING:
                client.reply(Error("ERR Protocol error: too big request"))
                return

    @staticmethod
    def _commands(reader: hiredis.Reader, inline: bytearray, data: bytes):
        """The complete commands in what was received: RESP arrays, or inline lines (what
        `telnet` sends) when no RESP command is half read."""
        inline += data
        while inline:
            if reader.has_data() or inline.startswith(b"*"):
                reader.feed(bytes(inline))
                inline.clear()
                break
            line, newline, rest = bytes(inline).partition(b"\n")
            if not newline:
                return
            inline[:] = rest
            if args := line.split():
                yield [a.decode(errors="replace") for a in args]
        while (args := reader.gets()) is not False:
            if isinstance(args, list) and args and all(isinstance(a, bytes) for a in args):
                yield [a.decode(errors="replace") for a in args]
            elif not isinstance(args, list) or args:
                raise hiredis.ProtocolError("expected an array of bulk strings")

    # ---- commands ----------------------------------------------------------------------------

    def execute(self, client: Client, args: list[str]):
        command = args[0].upper()
        if client.subscribed and client.proto == 2 and command not in SUBSCRIBED_ONLY:
            return Error(f"ERR Can't execute '{args[0].lower()}': only (P|S)SUBSCRIBE / "
                         "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
        handler = getattr(self, f"cmd_{command.lower()}", None)
        if handler is None:
            return _unknown_command(args)
        return handler(client, args)

    def cmd_ping(self, client, args):
        if len(args) > 2:
            return _wrong_args("ping")
        if client.subscribed and client.proto == 2:
            return ["pong", args[1] if len(args) == 2 else ""]
        return args[1] if len(args) == 2 else Simple("PONG")

    def cmd_echo(self, client, args):
        return args[1] if len(args) == 2 else _wrong_args("echo")

    def cmd_auth(self, client, args):
        return Simple("OK") if len(args) in (2, 3) else _wrong_args("auth")

    def cmd_quit(self, client, args):
        client.reply(Simple("OK"))
        raise Quit

    def cmd_reset(self, client, args):
        client.channels.clear()
        client.patterns.clear()
        client.proto, client.name = 2, None
        return Simple("RESET")

    def cmd_hello(self, client, args):
        rest = args[1:]
        if rest:
            if not rest[0].isdigit() or int(rest[0]) not in (2, 3):
                return Error("NOPROTO unsupported protocol version")
            proto, rest = int(rest[0]), rest[1:]
            while rest:
                option = rest[0].upper()
                if option == "AUTH" and len(rest) >= 3:
                    rest = rest[3:]
                elif option == "SETNAME" and len(rest) >= 2:
                    client.name, rest = rest[1], rest[2:]
                else:
                    return Error(f"ERR Syntax error in HELLO option '{rest[0]}'")
            client.proto = proto
        return {"server": "redis", "version": REDIS_VERSION, "proto": client.proto,
                "id": client.id, "mode": "sentinel", "modules": []}

    def cmd_client(self, client, args):
        sub = args[1].upper() if len(args) > 1 else ""
        if sub == "SETNAME" and len(args) == 3:
            client.name = args[2] or None
            return Simple("OK")
        if sub == "GETNAME" and len(args) == 2:
            return client.name
        if sub == "ID" and len(args) == 2:
            return client.id
        if sub == "SETINFO" and len(args) == 4:
            return Simple("OK")
        if not sub:
            return _wrong_args("client")
        return Error(f"ERR unknown subcommand '{args[1]}'. Try CLIENT HELP.")

    def cmd_command(self, client, args):
        return []        # no command table: redis-cli then gives no hints, nothing else

    def cmd_role(self, client, args):
        return ["sentinel", [d.name for _, d in sorted(self.view.dbs.items())]]

    def cmd_subscribe(self, client, args, *, pattern=False):
        kind = "psubscribe" if pattern else "subscribe"
        if len(args) < 2:
            return _wrong_args(kind)
        targets = client.patterns if pattern else client.channels
        for name in args[1:-1]:
            targets.add(name)
            client.reply(Push([kind, name, client.subscribed]))
        targets.add(args[-1])
        return Push([kind, args[-1], client.subscribed])

    def cmd_psubscribe(self, client, args):
        return self.cmd_subscribe(client, args, pattern=True)

    def cmd_unsubscribe(self, client, args, *, pattern=False):
        kind = "punsubscribe" if pattern else "unsubscribe"
        targets = client.patterns if pattern else client.channels
        names = args[1:] or sorted(targets)
        if not names:
            return Push([kind, None, client.subscribed])
        replies = []
        for name in names:
            targets.discard(name)
            replies.append(Push([kind, name, client.subscribed]))
        for reply in replies[:-1]:
            client.reply(reply)
        return replies[-1]

    def cmd_punsubscribe(self, client, args):
        return self.cmd_unsubscribe(client, args, pattern=True)

    def cmd_info(self, client, args):
        view = self.view
        sections = {a.lower() for a in args[1:]} or {"default"}
        everything = sections & {"all", "everything", "default"}
        out = []
        if everything or "server" in sections:
            out += ["# Server", f"redis_version:{REDIS_VERSION}", "redis_mode:sentinel",
                    f"run_id:{run_id(view.fqdn, 'node', self.config.uid)}",
                    f"tcp_port:{self.config.sentinel_port}",
                    f"uptime_in_seconds:{int(time.time() - self.started)}", ""]
        if everything or "clients" in sections:
            out += ["# Clients", f"connected_clients:{len(self.clients)}", ""]
        if everything or "sentinel" in sections:
            out += ["# Sentinel", f"sentinel_masters:{len(view.dbs)}", "sentinel_tilt:0",
                    "sentinel_running_scripts:0", "sentinel_scripts_queue_length:0"]
            for i, (_, db) in enumerate(sorted(view.dbs.items())):
                status = "ok" if db.master else "sdown"
                out.append(f"master{i}:name={db.name},status={status},address={db.master}:"
                           f"{db.port},slaves={len(db.addresses[1:])},"
                           f"sentinels={len(view.sentinels())}")
            out.append("")
        return "\r\n".join(out)

    def cmd_sentinel(self, client, args):
        if len(args) < 2:
            return _wrong_args("sentinel")
        sub, view = args[1].lower(), self.view
        age_ms = int(max(0.0, time.time() - view.read_at) * 1000) if view.read_at else 0
        me = self.config.uid
        if sub == "masters" and len(args) == 2:
            return [master_state(d, view, me, age_ms, self.epochs.get(u, 0))
                    for u, d in sorted(view.dbs.items())]
        if sub == "myid" and len(args) == 2:
            return run_id(view.fqdn, "node", me)
        named = ("get-master-addr-by-name", "master", "replicas", "slaves", "sentinels",
                 "ckquorum")
        if sub not in named:
            return Error(f"ERR unknown subcommand '{args[1]}'. Try SENTINEL HELP.")
        if len(args) != 3:
            return Error(f"ERR wrong number of arguments for 'sentinel|{sub}' command")
        db = view.by_name(args[2])
        if sub == "get-master-addr-by-name":
            return [db.master, str(db.port)] if db and db.master else NullArray
        if db is None:
            return NO_SUCH_MASTER
        if sub == "master":
            return master_state(db, view, me, age_ms, self.epochs.get(db.uid, 0))
        if sub in ("replicas", "slaves"):
            return replica_states(db, view, age_ms)
        if sub == "sentinels":
            return sentinel_states(view, me, age_ms)
        usable = len(view.sentinels())
        quorum = usable // 2 + 1
        if usable < quorum:
            return Error(f"NOQUORUM {usable} usable Sentinels. Not enough available Sentinels "
                         "to reach the specified quorum for this master")
        return Simple(f"OK {usable} usable Sentinels. Quorum and failover authorization can be "
                      "reached")


main = service_command("sentinel_service", SentinelService)

if __name__ == "__main__":
    main()
